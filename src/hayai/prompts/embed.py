"""Weighted prompt embeddings per model family, computed the way A1111 computes them.

- SD1/SD2: one CLIP. Each 77-token chunk is encoded on its own (last layer, or with clip skip N the
  hidden state N layers from the end passed through the final layer norm) and the chunks are joined
  along the token axis.
- SDXL: both CLIPs read the same chunks; each gives its penultimate hidden state, the two are joined
  along the feature axis; the pooled vector comes from the second encoder's first chunk.
- SD3: CLIP-L and CLIP-G as in SDXL, zero-padded to T5's width, followed by T5's sequence (256 tokens,
  512 for longer prompts); pooled = both CLIP pooled vectors of the first chunk.

Emphasis (A1111 "Original"): each chunk's output is multiplied token-wise by the weights, then scaled
so its mean is the unweighted mean. Per CLIP encoder for SDXL, on CLIP-L+G together for SD3 (as A1111
does); hayai also weights SD3's T5 sequence the same way, where A1111 computes T5 weights but drops them.
A chunk without weights is left exactly as the encoder returned it, so a plain prompt under 75 tokens
gives the pipeline's own `encode_prompt` output bit for bit.

Several texts (a prompt's schedule, the negative prompt) are padded to one length, as the pipelines
concatenate them: shorter CLIP parts with the empty prompt's chunk (A1111's padding), T5 to one length.
"""

from __future__ import annotations

from dataclasses import dataclass

from hayai.models.families import Family
from hayai.prompts.chunks import ClipChunk, clip_chunks, empty_chunk, t5_tokens
from hayai.prompts.parser import Fragment, parse_attention

__all__ = ["T5_DEFAULT_LENGTH", "T5_MAX_LENGTH", "Conditioning", "encode_texts"]

T5_DEFAULT_LENGTH = 256  # diffusers' SD3 default max_sequence_length
T5_MAX_LENGTH = 512  # the longest sequence the SD3 pipelines accept


@dataclass
class Conditioning:
    """One text through all of a family's encoders: token embeddings [1, T, C] and pooled [1, P] or None."""

    embeds: object  # torch.Tensor
    pooled: object | None = None


_NEGLIGIBLE_MEAN = 1e-4  # a mean below this fraction of the mean magnitude is rounding noise


def _emphasize(z, weights):
    """A1111's "Original" emphasis: weight each token, then restore the chunk's mean.

    Where either mean is negligible next to the values themselves (a final layer norm with no bias
    centres every token on 0, as the demo model's untrained one does), their ratio is rounding noise,
    possibly 0/0: the weighted values are kept as they are instead of scaled by it.
    """
    import torch

    multipliers = torch.tensor(weights, dtype=z.dtype, device=z.device).reshape(1, -1, 1)
    original_mean = z.mean()
    weighted = z * multipliers.expand(z.shape)
    new_mean = weighted.mean()
    negligible = _NEGLIGIBLE_MEAN * z.abs().mean()
    if original_mean.abs() <= negligible or new_mean.abs() <= negligible:
        return weighted
    return weighted * (original_mean / new_mean)


def _clip_run(encoder, ids, hidden_index: int | None, final_norm: bool, device):
    """(hidden states [1, 77, C], first output) of one chunk; hidden_index None means last_hidden_state."""
    import torch

    with torch.no_grad():
        out = encoder(torch.tensor([ids], device=device), output_hidden_states=hidden_index is not None)
    if hidden_index is None:
        return out.last_hidden_state, out[0]
    z = out.hidden_states[hidden_index]
    if final_norm:
        z = getattr(encoder, "text_model", encoder).final_layer_norm(z)
    return z, out[0]


def _chunks_for(tokenizer, fragment_lists: list[list[Fragment]], count: int) -> list[list[ClipChunk]]:
    out = []
    for fragments in fragment_lists:
        chunks = clip_chunks(tokenizer, fragments).chunks
        out.append(chunks + [empty_chunk(tokenizer)] * (count - len(chunks)))
    return out


def _chunk_count(tokenizers, fragment_lists: list[list[Fragment]]) -> int:
    return max(len(clip_chunks(tok, fragments).chunks) for tok in tokenizers for fragments in fragment_lists)


def _encode_clip(encoder, chunks: list[ClipChunk], hidden_index, final_norm, device):
    """Token embeddings of all chunks joined, and the first chunk's pooled/first output."""
    import torch

    outputs, first = [], None
    for k, chunk in enumerate(chunks):
        z, head = _clip_run(encoder, chunk.ids, hidden_index, final_norm, device)
        if chunk.weighted:
            z = _emphasize(z, chunk.weights)
        outputs.append(z)
        if k == 0:
            first = head
    return torch.cat(outputs, dim=1), first


def encode_texts(pipe, family: Family, texts: list[str], clip_skip: int = 1, *, device=None) -> dict[str, Conditioning]:
    """Encode each distinct text (A1111 syntax, LoRA tags already removed) into one common length.

    `clip_skip` is A1111's: 1 uses the usual layer. For SD1/SD2, N takes the hidden state N layers from
    the end through the final layer norm; for SDXL/SD3 (which already use the penultimate layer) N moves
    N-1 layers further back, as diffusers' `clip_skip=N-1` does. `device` is where the text encoders
    run and the embeddings are returned, as in diffusers' `encode_prompt(device=...)` (default: the
    pipeline's execution device).
    """
    if clip_skip < 1:
        raise ValueError(f"clip_skip={clip_skip} must be at least 1")
    family = Family(family)
    device = device if device is not None else pipe._execution_device
    unique = list(dict.fromkeys(texts))
    fragment_lists = [parse_attention(text) for text in unique]
    if family in (Family.SD1, Family.SD2):
        results = _encode_sd1(pipe, fragment_lists, clip_skip, device)
    elif family is Family.SDXL:
        results = _encode_sdxl(pipe, fragment_lists, clip_skip, device)
    elif family is Family.SD3:
        results = _encode_sd3(pipe, fragment_lists, clip_skip, device)
    else:
        raise ValueError(f"family={family.value!r}: hayai encodes prompts for sd1, sd2, sdxl and sd3")
    return dict(zip(unique, results))


def _encode_sd1(pipe, fragment_lists, clip_skip, device) -> list[Conditioning]:
    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer
    count = _chunk_count([tokenizer], fragment_lists)
    hidden_index = None if clip_skip == 1 else -clip_skip
    out = []
    for chunks in _chunks_for(tokenizer, fragment_lists, count):
        z, _ = _encode_clip(encoder, chunks, hidden_index, True, device)
        out.append(Conditioning(z.to(dtype=encoder.dtype, device=device)))
    return out


def _encode_sdxl(pipe, fragment_lists, clip_skip, device) -> list[Conditioning]:
    import torch

    pairs = [(e, t) for e, t in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)) if e is not None]
    count = _chunk_count([t for _, t in pairs], fragment_lists)
    hidden_index = -(clip_skip + 1)
    dtype = pipe.text_encoder_2.dtype
    per_encoder = []
    for encoder, tokenizer in pairs:
        per_encoder.append(
            [_encode_clip(encoder, chunks, hidden_index, False, device) for chunks in _chunks_for(tokenizer, fragment_lists, count)]
        )
    out = []
    for k in range(len(fragment_lists)):
        embeds = torch.cat([results[k][0] for results in per_encoder], dim=-1)
        pooled = per_encoder[-1][k][1]  # text_encoder_2's projected pooled output of the first chunk
        out.append(Conditioning(embeds.to(dtype=dtype, device=device), pooled.to(dtype=dtype, device=device)))
    return out


def _encode_sd3(pipe, fragment_lists, clip_skip, device) -> list[Conditioning]:
    import torch

    count = _chunk_count([pipe.tokenizer, pipe.tokenizer_2], fragment_lists)
    hidden_index = -(clip_skip + 1)
    joint_dim = pipe.transformer.config.joint_attention_dim
    t5_length = T5_DEFAULT_LENGTH
    if pipe.text_encoder_3 is not None:
        longest = max(t5_tokens(pipe.tokenizer_3, f, T5_MAX_LENGTH).prompt_tokens for f in fragment_lists)
        t5_length = T5_DEFAULT_LENGTH if longest < T5_DEFAULT_LENGTH else T5_MAX_LENGTH
    out = []
    for fragments in fragment_lists:
        chunks_l = _chunks_for(pipe.tokenizer, [fragments], count)[0]
        chunks_g = _chunks_for(pipe.tokenizer_2, [fragments], count)[0]
        lg_parts, pooled = [], None
        for k, (chunk_l, chunk_g) in enumerate(zip(chunks_l, chunks_g)):
            z_l, pooled_l = _clip_run(pipe.text_encoder, chunk_l.ids, hidden_index, False, device)
            z_g, pooled_g = _clip_run(pipe.text_encoder_2, chunk_g.ids, hidden_index, False, device)
            z = torch.cat([z_l.to(pipe.text_encoder.dtype), z_g.to(pipe.text_encoder.dtype)], dim=-1)
            if chunk_l.weighted:
                z = _emphasize(z, chunk_l.weights)
            lg_parts.append(z)
            if k == 0:
                pooled = torch.cat([pooled_l, pooled_g], dim=-1)
        lg = torch.cat(lg_parts, dim=1).to(device=device)
        if pipe.text_encoder_3 is None:
            t5 = torch.zeros((1, t5_length, joint_dim), device=device, dtype=pipe.text_encoder.dtype)
        else:
            tokens = t5_tokens(pipe.tokenizer_3, fragments, t5_length)
            with torch.no_grad():
                t5 = pipe.text_encoder_3(torch.tensor([tokens.ids], device=device))[0]
            if tokens.weighted:
                t5 = _emphasize(t5, tokens.weights)
            t5 = t5.to(dtype=pipe.text_encoder_3.dtype, device=device)
        lg = torch.nn.functional.pad(lg, (0, t5.shape[-1] - lg.shape[-1]))
        out.append(Conditioning(torch.cat([lg, t5], dim=-2), pooled.to(device=device)))
    return out
