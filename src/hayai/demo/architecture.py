"""The demo model's parts: configs, vocabulary, tokenizer, and the pipeline they make.

A standard diffusers `StableDiffusionPipeline` (so hayai's engine, samplers and metadata treat it as any
SD1 model): a KL autoencoder with 3 blocks (scale factor 4: a 64x64 image is a 16x16x4 latent), a UNet
with four levels (16x16 down to 2x2), a 15x15 first convolution and cross-attention to the prompt on the
three lower levels, a small CLIP text encoder (2 layers, width 128, CLIP's 77 positions), and SD1's noise
schedule with SD2's v-prediction (the model predicts the clean image at high noise, where the layout is
decided, and the noise at low noise).

The tokenizer is a real `CLIPTokenizer` whose vocabulary is CLIP's 512 byte tokens plus every caption
word, built by byte-pair merges learned from the caption words (`bpe_merges`): each caption word is one
token, and any other text still tokenizes, into byte and word-piece tokens, as CLIP's own would.
"""

from __future__ import annotations

from collections import Counter

from hayai.demo.shapes import IMAGE_SIZE, vocabulary
from hayai.models.tiny import clip_byte_vocab

__all__ = [
    "LATENT_CHANNELS",
    "MAX_TOKENS",
    "SCHEDULER_CONFIG",
    "TEXT_WIDTH",
    "bpe_merges",
    "build_pipeline",
    "demo_tokenizer",
    "demo_vocab",
    "scheduler_config",
    "text_config",
    "unet_config",
    "vae_config",
]

LATENT_CHANNELS = 4
VAE_FACTOR = 4  # 2 ** (number of VAE blocks - 1)
TEXT_WIDTH = 128  # the text encoder's hidden size = the UNet's cross-attention width
MAX_TOKENS = 77  # CLIP's context length, so prompt tools that count in 75-token chunks work unchanged
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")

# SD1's training schedule (scaled linear betas, 1000 steps), so hayai's samplers and schedule types apply
# exactly as they do to Stable Diffusion 1.5.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    steps_offset=1,
    timestep_spacing="leading",
)


def vae_config() -> dict:
    blocks = (8, 16, 32)
    return dict(
        in_channels=3,
        out_channels=3,
        block_out_channels=blocks,
        down_block_types=["DownEncoderBlock2D"] * len(blocks),
        up_block_types=["UpDecoderBlock2D"] * len(blocks),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        # one group (a layer norm over channels and pixels), not one per channel: a group of one channel
        # is normalised to zero mean per image, which erases flat colour (most of these images); with 8
        # groups the autoencoder learned ~3x slower and shifted colours, with 2 it still shifted some
        norm_num_groups=1,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,  # replaced after the VAE is trained: 1 / std of its latents
    )


def unet_config() -> dict:
    return dict(
        sample_size=IMAGE_SIZE // VAE_FACTOR,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        # convolutions only at 16x16; cross-attention to the prompt at 8x8, 4x4 and 2x2 (and in the middle).
        # The 2x2 level is there for "where": the UNet has no position embedding, so it knows where a pixel
        # is only from the zero padding at the borders, and at 2x2 every cell is a different corner.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        # a 15x15 first convolution: every latent pixel sees the frame's edges (zero padding) from the first
        # layer, which is how a convolutional UNet knows where it is; with 3x3 it learned colour and shape
        # but ignored "top left" (measured: no difference at all between right and swapped position words)
        conv_in_kernel=15,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=4,  # diffusers' SD1 UNet reads this as the number of heads
        norm_num_groups=8,
    )


def scheduler_config() -> dict:
    return dict(SCHEDULER_CONFIG)


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that join each of `words` into one token, learned as BPE learns them.

    Starting from characters (the last one marked word-final, `</w>`), the most frequent adjacent pair
    is merged, ties broken alphabetically, until every word is a single symbol. Applying the merges in
    this order (what a BPE tokenizer does) rebuilds each word exactly, and nothing else is merged.
    """
    words_as_symbols = [tuple(word[:-1]) + (word[-1] + "</w>",) for word in words]
    merges: list[tuple[str, str]] = []
    while any(len(symbols) > 1 for symbols in words_as_symbols):
        counts = Counter(pair for symbols in words_as_symbols for pair in zip(symbols, symbols[1:]))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        words_as_symbols = [_merge(symbols, best) for symbols in words_as_symbols]
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def demo_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocabulary, merges): CLIP's byte tokens, then every merge's result, then the special tokens."""
    merges = bpe_merges(vocabulary())
    vocab = {token: i for i, token in enumerate(t for t in clip_byte_vocab() if t not in SPECIAL_TOKENS)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return vocab, merges


def demo_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = demo_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = MAX_TOKENS
    return tokenizer


def text_config():
    from transformers import CLIPTextConfig

    vocab, _ = demo_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=TEXT_WIDTH,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def build_pipeline(seed: int = 0):
    """The demo pipeline with freshly initialised weights (drawn from `seed`), ready to train."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_config())
        unet = UNet2DConditionModel(**unet_config())
        text_encoder = CLIPTextModel(text_config())
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=demo_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
