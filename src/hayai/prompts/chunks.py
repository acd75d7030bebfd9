"""Token chunks: weighted fragments -> the token ids and per-token weights each text encoder sees.

CLIP encoders read 77 positions: a start token, 75 prompt tokens, an end token (padding after it). A1111
(`modules/sd_hijack_clip.py`) encodes longer prompts as several such chunks and concatenates the
outputs along the token axis; a chunk is closed early at BREAK, and when a chunk fills up less than
`comma_backtrack` tokens after a comma, the words after that comma move to the next chunk, so a phrase
is not cut in half. A prompt under 75 tokens gives exactly the ids diffusers' own tokenizer call gives.

T5 (SD3's third encoder) reads one sequence: the prompt tokens, an end token, padding, up to a limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hayai.prompts.parser import Fragment

__all__ = ["CHUNK_LENGTH", "COMMA_BACKTRACK", "ClipChunk", "ClipTokens", "T5Tokens", "clip_chunks", "empty_chunk", "t5_tokens"]

CHUNK_LENGTH = 75  # prompt tokens per CLIP chunk (77 positions with start and end)
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`


@dataclass
class ClipChunk:
    """One 77-position CLIP input: ids (start, tokens, end, padding) and a weight per position."""

    ids: list[int]
    weights: list[float]
    prompt_tokens: int  # how many of the positions hold prompt tokens

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


@dataclass
class ClipTokens:
    chunks: list[ClipChunk]
    token_count: int  # prompt tokens, as A1111 counts them (75 per full chunk)
    breaks: int = 0  # chunks closed by BREAK
    backtracks: list[int] = field(default_factory=list)  # tokens moved to the next chunk at each comma backtrack


@dataclass
class T5Tokens:
    ids: list[int]
    weights: list[float]
    prompt_tokens: int  # tokens of the prompt (without the end token) before any cut
    kept_tokens: int  # prompt tokens that fit under the limit
    cut_text: str  # the text that did not fit ("" when nothing was cut)

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


def _special_ids(tokenizer) -> tuple[int, int, int]:
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    return start, end, pad


def _tokenize(tokenizer, fragments: list[Fragment]) -> list[list[int]]:
    texts = [f.text for f in fragments if not f.is_break]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] if texts else []
    it = iter(ids)
    return [[] if f.is_break else next(it) for f in fragments]


def empty_chunk(tokenizer) -> ClipChunk:
    """The chunk of an empty prompt: what A1111 pads a shorter prompt (or negative) with."""
    start, end, pad = _special_ids(tokenizer)
    ids = [start, end] + [pad] * CHUNK_LENGTH
    return ClipChunk(ids, [1.0] * (CHUNK_LENGTH + 2), 0)


def clip_chunks(tokenizer, fragments: list[Fragment], *, comma_backtrack: int = COMMA_BACKTRACK) -> ClipTokens:
    """Split weighted fragments into 77-position CLIP chunks, A1111's `tokenize_line`."""
    start, end, pad = _special_ids(tokenizer)
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[ClipChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    state = {"count": 0, "last_comma": -1, "breaks": 0}
    backtracks: list[int] = []

    def close(is_last: bool = False) -> None:
        state["count"] += len(tokens) if is_last else CHUNK_LENGTH
        n = len(tokens)
        ids = [start, *tokens, end] + [pad] * (CHUNK_LENGTH - n)
        chunks.append(ClipChunk(ids, [1.0, *weights] + [1.0] * (CHUNK_LENGTH - n + 1), n))
        tokens.clear()
        weights.clear()
        state["last_comma"] = -1

    for fragment, ids in zip(fragments, _tokenize(tokenizer, fragments)):
        if fragment.is_break:
            state["breaks"] += 1
            close()
            continue
        for token in ids:
            if token == comma:
                state["last_comma"] = len(tokens)
            elif (
                comma_backtrack
                and len(tokens) == CHUNK_LENGTH
                and state["last_comma"] != -1
                and len(tokens) - state["last_comma"] <= comma_backtrack
            ):
                cut = state["last_comma"] + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                del tokens[cut:], weights[cut:]
                backtracks.append(len(moved_tokens))
                close()
                tokens.extend(moved_tokens)
                weights.extend(moved_weights)
            if len(tokens) == CHUNK_LENGTH:
                close()
            tokens.append(token)
            weights.append(fragment.weight)
    if tokens or not chunks:
        close(is_last=True)
    return ClipTokens(chunks, state["count"], state["breaks"], backtracks)


def t5_tokens(tokenizer, fragments: list[Fragment], length: int) -> T5Tokens:
    """T5 ids for weighted fragments: tokens, end token, padding to `length` (longer prompts are cut).

    BREAK means nothing to T5 and is skipped (as A1111 does for SD3).
    """
    _, end, pad = _special_ids(tokenizer)
    tokens: list[int] = []
    weights: list[float] = []
    for fragment, ids in zip(fragments, _tokenize(tokenizer, fragments)):
        tokens.extend(ids)
        weights.extend([fragment.weight] * len(ids))
    total = len(tokens)
    keep = min(total, length - 1)
    cut_text = tokenizer.decode(tokens[keep:]) if keep < total else ""
    ids = tokens[:keep] + [end] + [pad] * (length - keep - 1)
    return T5Tokens(ids, weights[:keep] + [1.0] * (length - keep), total, keep, cut_text)
