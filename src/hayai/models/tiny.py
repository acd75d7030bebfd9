"""Tiny pipelines built from configs: the fake backend for tests and the offline placeholder.

Like diffusers' own tests, every component is built from a config with a handful of channels, so a
whole pipeline generates a 64x64 image in well under a second on a CPU. The shapes are small but
the structure is the real one (a VAE with four blocks, so latents are 1/8 of the image as in every
Stable Diffusion; CLIP and T5 text encoders with working tokenizers), so code that works here has to
work on the real models too.

Weights are random but deterministic: `build_tiny_pipeline(family, seed)` gives the same tensors for
the same seed and torch version.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hayai.models.families import Family

__all__ = ["TINY_FAMILIES", "build_tiny_pipeline", "clip_byte_vocab", "tiny_clip_tokenizer", "tiny_t5_tokenizer"]

TINY_FAMILIES = (Family.SD1, Family.SDXL, Family.SD3)

# Shared sizes. The VAE has 4 blocks (scale factor 8, as in the real models).
_VAE_BLOCKS = (8, 16, 16, 16)
# The second CLIP is wider than the first, as bigG/CLIP-G are wider than CLIP-L: diffusers' single-file
# loader tells the two apart by width, so equal widths would load the wrong weights.
_CLIP_HIDDEN = 32
_CLIP2_HIDDEN = 48
_T5_DIM = 96  # >= the two CLIP widths together: SD3 pads the CLIP features to the T5 width


@lru_cache(maxsize=1)
def _byte_chars() -> tuple[str, ...]:
    """CLIP's byte-to-unicode table (the 256 printable stand-ins for the byte values)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + extra)
            extra += 1
    return tuple(chr(c) for c in chars)


def clip_byte_vocab() -> dict[str, int]:
    """A byte-level CLIP vocabulary with no merges: every byte, alone and word-final, plus the specials.

    With it a real `CLIPTokenizer` tokenizes any text, one token a character.
    """
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for ch in _byte_chars():
            vocab[ch + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=clip_byte_vocab(), merges=[])
    tokenizer.model_max_length = 77
    return tokenizer


def tiny_t5_tokenizer():
    """A unigram T5 tokenizer over printable ASCII (real `T5TokenizerFast`, tiny vocabulary)."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)]
    pieces += [("▁" + chr(c), -2.5) for c in range(33, 127)]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0)
    tokenizer.model_max_length = 256
    return tokenizer


def _clip_config(*, projection: bool, hidden: int = _CLIP_HIDDEN):
    from transformers import CLIPTextConfig

    vocab = clip_byte_vocab()
    return CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        layer_norm_eps=1e-05,
        hidden_act="quick_gelu",
        projection_dim=hidden if projection else 512,
    )


def _vae(**overrides):
    from diffusers import AutoencoderKL

    kwargs = dict(
        block_out_channels=_VAE_BLOCKS,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(_VAE_BLOCKS),
        up_block_types=["UpDecoderBlock2D"] * len(_VAE_BLOCKS),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    kwargs.update(overrides)
    return AutoencoderKL(**kwargs)


def _sd1():
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_CLIP_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionPipeline(
        vae=_vae(scaling_factor=0.18215),
        text_encoder=CLIPTextModel(_clip_config(projection=False)),
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    time_embed_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 2),
        # pooled text embeds of text_encoder_2 + 6 time ids (original size, crop, target size)
        projection_class_embeddings_input_dim=_CLIP2_HIDDEN + 6 * time_embed_dim,
        cross_attention_dim=_CLIP_HIDDEN + _CLIP2_HIDDEN,
        norm_num_groups=16,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025),
        text_encoder=CLIPTextModel(_clip_config(projection=False)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection=True, hidden=_CLIP2_HIDDEN)),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def _sd3():
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=_T5_DIM,
        pooled_projection_dim=_CLIP_HIDDEN + _CLIP2_HIDDEN,
        pos_embed_max_size=32,
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tiny_t5_tokenizer()),
            d_model=_T5_DIM,
            d_kv=16,
            d_ff=96,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            is_encoder_decoder=False,
            use_cache=False,
        )
    )
    clip_l = CLIPTextModelWithProjection(_clip_config(projection=True))
    with torch.no_grad():
        # SD3 does not project CLIP-L's pooled output (diffusers loads an identity there from single files)
        clip_l.text_projection.weight.copy_(torch.eye(_CLIP_HIDDEN))
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=clip_l,
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(projection=True, hidden=_CLIP2_HIDDEN)),
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=tiny_t5_tokenizer(),
    )


_BUILDERS = {Family.SD1: _sd1, Family.SDXL: _sdxl, Family.SD3: _sd3}


def build_tiny_pipeline(family: Family | str, seed: int = 0):
    """A tiny diffusers pipeline of `family` with random weights drawn from `seed`."""
    import torch

    family = Family(family)
    if family not in _BUILDERS:
        raise ValueError(f"family={family.value!r} has no tiny pipeline; choose one of {[f.value for f in TINY_FAMILIES]}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(family: Family | str, folder: Path, seed: int = 0) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder (safetensors)."""
    pipe = build_tiny_pipeline(family, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
