"""The real SD1.5, SDXL-base and SD3.5-medium architectures, built from their published configs.

Each architecture is the exact set of diffusers/transformers configs of the published model folder
(`stable-diffusion-v1-5/stable-diffusion-v1-5`, `stabilityai/stable-diffusion-xl-base-1.0`,
`stabilityai/stable-diffusion-3.5-medium`), so a pipeline built here has the real shapes, parameter
counts, FLOPs and activation sizes, without downloading anything. Users reach them as
`--model arch:sd15` / `arch:sdxl` / `arch:sd35m`; the planner reads their facts; the sweeps and
benchmarks (issue #6) run them with random weights.

`build_architecture(name)` builds on the meta device (no memory at all). With `device="cpu"` or
`"cuda"` the weights are created once, directly on that device in the requested dtype, and filled
from `seed` with a scaled init (std 1/sqrt(fan_in), norms 1/0): plain N(0, 1) weights overflow fp16
within a few layers at this scale, while with this init no activation of the SD1.5 UNet exceeds ~20
(fp16 reaches 65504). The values are windows of one pool of N(0, 1) draws, so filling 8B weights
runs at memory speed, and they are the same on every device for the same seed.

Tokenizers: the real vocabularies cannot be downloaded, so the CLIP tokenizers are the byte-level
vocabulary of `hayai.models.tiny` padded with placeholder tokens to CLIP's 49408 entries (start and
end tokens at the real ids 49406/49407), and the T5 tokenizer is a unigram over printable ASCII padded
to the real 32000 pieces + 100 sentinels (32100 entries, as google/t5-v1_1-xxl's; its embedding table
has 32128 rows, as the real one). Prompts tokenize; the embedding tables have their real shapes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from hayai.models.families import Family
from hayai.models.tiny import clip_byte_vocab

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "ModelSpec",
    "PUBLISHED_PARAMS",
    "build_architecture",
    "build_component",
    "real_clip_tokenizer",
    "real_t5_tokenizer",
]


@dataclass(frozen=True)
class ModelSpec:
    library: str  # "diffusers" or "transformers"
    class_name: str  # e.g. "UNet2DConditionModel", "CLIPTextModelWithProjection"
    config: dict  # constructor kwargs (diffusers) or the transformers config's kwargs
    config_class: str | None = None  # transformers config class, e.g. "CLIPTextConfig"


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: Family
    pipeline_class: str
    source: str  # the published model folder the configs come from
    models: dict[str, ModelSpec]  # pipeline attribute -> model
    tokenizers: dict[str, str]  # pipeline attribute -> "clip" | "clip_bang_pad" | "t5"
    scheduler: tuple[str, dict]
    pipeline_kwargs: dict = field(default_factory=dict)


# --- Shared configs. Sources: the config.json files of the folders named in ArchSpec.source, as quoted
# by diffusers' docs/tests and the offline-config copies of them on GitHub (verified field by field).

_CLIP_BASE = dict(
    vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=0, pad_token_id=1, eos_token_id=2
)
# openai/clip-vit-large-patch14 text tower (SD1.5, SDXL text_encoder, SD3 text_encoder)
_CLIP_L = dict(
    _CLIP_BASE, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    hidden_act="quick_gelu", projection_dim=768,
)
# laion/CLIP-ViT-bigG-14-laion2B-39B-b160k text tower (SDXL text_encoder_2; SD3's "CLIP-G" is the same shape)
_CLIP_BIGG = dict(
    _CLIP_BASE, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
    hidden_act="gelu", projection_dim=1280,
)
# google/t5-v1_1-xxl encoder (SD3 text_encoder_3)
_T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.1,
    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False, use_cache=False,
)
_VAE_BASE = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, act_fn="silu", norm_num_groups=32,
)
_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

_SD15 = ArchSpec(
    name="sd15",
    family=Family.SD1,
    pipeline_class="StableDiffusionPipeline",
    source="stable-diffusion-v1-5/stable-diffusion-v1-5",
    models={
        "text_encoder": ModelSpec("transformers", "CLIPTextModel", _CLIP_L, "CLIPTextConfig"),
        "unet": ModelSpec("diffusers", "UNet2DConditionModel", dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
            down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
            flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
        )),
        "vae": ModelSpec("diffusers", "AutoencoderKL", dict(_VAE_BASE, latent_channels=4, sample_size=512, scaling_factor=0.18215)),
    },
    tokenizers={"tokenizer": "clip"},
    scheduler=("PNDMScheduler", dict(_SD_BETAS, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)),
    pipeline_kwargs=dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False),
)

_SDXL = ArchSpec(
    name="sdxl",
    family=Family.SDXL,
    pipeline_class="StableDiffusionXLPipeline",
    source="stabilityai/stable-diffusion-xl-base-1.0",
    models={
        "text_encoder": ModelSpec("transformers", "CLIPTextModel", _CLIP_L, "CLIPTextConfig"),
        "text_encoder_2": ModelSpec("transformers", "CLIPTextModelWithProjection", _CLIP_BIGG, "CLIPTextConfig"),
        "unet": ModelSpec("diffusers", "UNet2DConditionModel", dict(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32, norm_eps=1e-5,
            act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1,
        )),
        "vae": ModelSpec("diffusers", "AutoencoderKL", dict(
            _VAE_BASE, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True,
        )),
    },
    tokenizers={"tokenizer": "clip", "tokenizer_2": "clip_bang_pad"},
    scheduler=("EulerDiscreteScheduler", dict(
        _SD_BETAS, steps_offset=1, timestep_spacing="leading", interpolation_type="linear", prediction_type="epsilon",
        use_karras_sigmas=False,
    )),
    pipeline_kwargs=dict(force_zeros_for_empty_prompt=True, add_watermarker=False),
)

_SD35M = ArchSpec(
    name="sd35m",
    family=Family.SD3,
    pipeline_class="StableDiffusion3Pipeline",
    source="stabilityai/stable-diffusion-3.5-medium",
    models={
        "text_encoder": ModelSpec("transformers", "CLIPTextModelWithProjection", _CLIP_L, "CLIPTextConfig"),
        "text_encoder_2": ModelSpec("transformers", "CLIPTextModelWithProjection", _CLIP_BIGG, "CLIPTextConfig"),
        "text_encoder_3": ModelSpec("transformers", "T5EncoderModel", _T5_XXL, "T5Config"),
        "transformer": ModelSpec("diffusers", "SD3Transformer2DModel", dict(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
            pos_embed_max_size=384, dual_attention_layers=list(range(13)), qk_norm="rms_norm",
        )),
        "vae": ModelSpec("diffusers", "AutoencoderKL", dict(
            _VAE_BASE, latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
            use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
        )),
    },
    tokenizers={"tokenizer": "clip", "tokenizer_2": "clip_bang_pad", "tokenizer_3": "t5"},
    scheduler=("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0)),
)

ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in (_SD15, _SDXL, _SD35M)}

# Published parameter counts: (architecture, component) -> (count, source). "State-dict elements" where the
# published figure counts buffers stored in the checkpoint too (SD3's 384x384x1536 sin-cos pos_embed).
PUBLISHED_PARAMS: dict[tuple[str, str], tuple[int, str]] = {
    ("sd15", "unet"): (859_520_964, "diffusers ModelMixin.num_parameters docstring example (SD1.5 UNet); DeepSpeed-MII README 'SD param count'"),
    ("sd15", "vae"): (83_653_863, "DeepSpeed-MII README 'SD param count: vae 83653863'"),
    ("sd15", "text_encoder"): (123_060_480, "DeepSpeed-MII README 'SD param count: text_encoder 123060480' (CLIP ViT-L/14 text)"),
    ("sdxl", "unet"): (2_567_463_684, "SDXL base UNet, diffusers num_parameters (e.g. kohya/dreambooth logs 'unet params = 2567463684')"),
    ("sdxl", "text_encoder"): (123_060_480, "CLIP ViT-L/14 text tower, as SD1.5"),
    ("sdxl", "text_encoder_2"): (694_659_840, "OpenCLIP bigG text + projection; NVIDIA AITune inspect table for SD3-medium text_encoder_2"),
    ("sdxl", "vae"): (83_653_863, "same AutoencoderKL shape as SD1.5 (SDXL VAE)"),
    ("sd35m", "text_encoder"): (123_650_304, "CLIP-L with projection; NVIDIA AITune inspect table for SD3-medium text_encoder"),
    ("sd35m", "text_encoder_2"): (694_659_840, "CLIP-G with projection; NVIDIA AITune inspect table for SD3-medium"),
    ("sd35m", "text_encoder_3"): (4_762_310_656, "T5-XXL encoder; NVIDIA AITune inspect table for SD3-medium text_encoder_3"),
    ("sd35m", "transformer"): (2_470_000_000, "Stability AI: '2.5B parameters' MMDiT-X; diffusers state dict 2.47B = 2.243B params + 0.226B pos_embed"),
    ("sd35m", "vae"): (83_819_683, "16-channel AutoencoderKL without quant convs (SD3/Flux VAE): 83819683 values"),
}


def _padded_clip_vocab() -> dict[str, int]:
    """The byte-level vocabulary of the tiny models, padded to CLIP's 49408 entries with the real special ids."""
    vocab = clip_byte_vocab()
    del vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    while len(vocab) < 49406:
        vocab[f"<|placeholder{len(vocab)}|>"] = len(vocab)
    vocab["<|startoftext|>"] = 49406
    vocab["<|endoftext|>"] = 49407
    return vocab


def real_clip_tokenizer(pad_token: str | None = None):
    """A CLIP tokenizer with CLIP's vocabulary size and special ids (byte-level, no merges).

    `pad_token="!"` mirrors the OpenCLIP bigG / CLIP-G tokenizers of SDXL and SD3 (pad id 0).
    """
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab=_padded_clip_vocab(), merges=[])
    tokenizer.model_max_length = 77
    if pad_token is not None:
        tokenizer.pad_token = pad_token
    return tokenizer


def real_t5_tokenizer():
    """A unigram T5 tokenizer with google/t5-v1_1-xxl's size: 32000 pieces + 100 sentinels."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)]
    pieces += [("▁" + chr(c), -2.5) for c in range(33, 127)]
    pieces += [(f"<placeholder{i}>", -100.0) for i in range(len(pieces), 32000)]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=100)
    tokenizer.model_max_length = 512
    return tokenizer


_TOKENIZERS = {"clip": real_clip_tokenizer, "clip_bang_pad": lambda: real_clip_tokenizer(pad_token="!"), "t5": real_t5_tokenizer}


def _instantiate(spec: ModelSpec):
    """The model of `spec`, under whatever device context the caller set."""
    import diffusers
    import transformers

    if spec.library == "diffusers":
        return getattr(diffusers, spec.class_name)(**spec.config)
    config = getattr(transformers, spec.config_class)(**spec.config)
    return getattr(transformers, spec.class_name)(config)


# Length of the pool of N(0, 1) draws that weights are cut from: a prime, so every row of every weight is
# a different window of it (no two rows equal). Drawing each weight afresh runs at ~50M values/s on a
# 2-core CPU (20 s for SD1.5, minutes for SD3.5); copying windows of a pool runs at memory speed.
_POOL_SIZE = 1_048_573


def _fill_from_pool_(tensor, pool, offset: int) -> None:
    """tensor.flatten()[k] = pool[(offset + k) % len(pool)], in contiguous slices."""
    flat = tensor.view(-1)
    position, total, size = 0, flat.numel(), pool.numel()
    while position < total:
        start = (offset + position) % size
        length = min(total - position, size - start)
        flat[position : position + length].copy_(pool[start : start + length])
        position += length


def _init_(tensor, name: str, in_norm: bool, pool, offset: int) -> None:
    """Scaled init: weights N(0, 1/fan_in), norm weights 1, every other 1-D tensor (biases) 0."""
    import torch

    with torch.no_grad():
        if tensor.ndim >= 2:
            _fill_from_pool_(tensor, pool, offset)
            tensor.mul_(tensor[0].numel() ** -0.5)  # std 1/sqrt(fan_in): activations keep unit scale
        elif in_norm and name == "weight":
            tensor.fill_(1.0)
        else:
            tensor.zero_()


def _materialise(model, device, dtype, seed: int) -> None:
    """Give every meta parameter real storage on `device` in `dtype`, filled deterministically from `seed`.

    The values are the same on every device for the same seed (the pool is drawn on the CPU). Parameters
    shared between modules (T5's tied embeddings) stay shared. Buffers (which were built for real) move
    to `device`; floating ones take `dtype`, as `Module.to(dtype)` would do.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(_POOL_SIZE, generator=generator).to(device)
    done: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        in_norm = "Norm" in type(module).__name__
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in done:
                data = torch.empty(param.shape, device=device, dtype=dtype if param.is_floating_point() else param.dtype)
                offset = int(torch.randint(_POOL_SIZE, (1,), generator=generator))
                _init_(data, name, in_norm, pool, offset)
                done[id(param)] = torch.nn.Parameter(data, requires_grad=param.requires_grad)
            module._parameters[name] = done[id(param)]
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = buffer.to(device=device, dtype=dtype if buffer.is_floating_point() else buffer.dtype)


def _build_model(spec: ModelSpec, device, dtype, seed: int):
    import torch
    from accelerate import init_empty_weights

    if torch.device(device).type == "meta":
        with torch.device("meta"):
            return _instantiate(spec)
    with init_empty_weights(include_buffers=False):  # parameters on meta, buffers (pos-embed tables) real
        model = _instantiate(spec)
    _materialise(model, device, dtype, seed)
    return model.eval()


def build_component(name: str, component: str, *, device="meta", dtype=None, seed: int = 0, config_overrides: dict | None = None):
    """One model of architecture `name` (e.g. `build_component("sd15", "unet")`), as `build_architecture` makes it.

    `config_overrides` changes config keys, e.g. `{"num_layers": 2}` for a shallower SD3.5 MMDiT of the same
    width (what the activation calibration measures when the full model does not fit in memory).
    """
    import torch

    if name not in ARCHITECTURES:
        raise ValueError(f"name={name!r} is not a known architecture; choose one of {sorted(ARCHITECTURES)}")
    models = ARCHITECTURES[name].models
    if component not in models:
        raise ValueError(f"component={component!r} is not part of {name}; it has {sorted(models)}")
    spec = models[component]
    if config_overrides:
        spec = ModelSpec(spec.library, spec.class_name, {**spec.config, **config_overrides}, spec.config_class)
    # each component has its own stream, so its weights do not depend on the others
    component_seed = seed * 1_000_003 + zlib.crc32(component.encode())
    return _build_model(spec, device, torch.float32 if dtype is None else dtype, component_seed)


def build_architecture(name: str, *, device="meta", dtype=None, seed: int = 0):
    """The full diffusers pipeline of architecture `name` ("sd15", "sdxl", "sd35m").

    On `device="meta"` nothing is allocated (shapes only: parameter counts, FLOPs). On a real device the
    weights are random, created directly there in `dtype` (default float32), the same for the same seed.
    """
    import diffusers

    if name not in ARCHITECTURES:
        raise ValueError(f"name={name!r} is not a known architecture; choose one of {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[name]
    parts = {attr: build_component(name, attr, device=device, dtype=dtype, seed=seed) for attr in spec.models}
    parts.update({attr: _TOKENIZERS[kind]() for attr, kind in spec.tokenizers.items()})
    scheduler_class, scheduler_config = spec.scheduler
    parts["scheduler"] = getattr(diffusers, scheduler_class)(**scheduler_config)
    pipe = getattr(diffusers, spec.pipeline_class)(**parts, **spec.pipeline_kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
