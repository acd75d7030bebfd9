"""`hayai prompt check`: what each text encoder will see of a prompt, and what to fix.

For the prompt and the negative prompt: the LoRA tags, the weighted fragments, the prompt-editing
schedule, and per encoder the token count and the chunks (with the text in each), what T5 cuts, and
what diffusers alone would have cut at 77 tokens. Warnings: filler adjectives (they spend tokens and
add little, seed 000's advice), an empty negative prompt, weights outside 0..2, parser notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hayai.models.families import Family
from hayai.prompts.chunks import CHUNK_LENGTH, clip_chunks, t5_tokens
from hayai.prompts.embed import T5_DEFAULT_LENGTH, T5_MAX_LENGTH
from hayai.prompts.parser import LoraTag, parse_attention, parse_prompt

__all__ = ["EncoderReport", "FILLER_WORDS", "PromptReport", "TextReport", "check_prompt", "load_tokenizers", "pipeline_tokenizers"]

FILLER_WORDS = (
    "beautiful", "amazing", "stunning", "gorgeous", "awesome", "incredible", "breathtaking", "wonderful",
    "fantastic", "magnificent", "marvelous", "spectacular", "perfect", "very", "extremely", "really", "super",
)
_ENCODER_NAMES = {"tokenizer": "CLIP-L", "tokenizer_2": "CLIP-G", "tokenizer_3": "T5"}
_SDXL_NAMES = {"tokenizer": "CLIP-L", "tokenizer_2": "OpenCLIP-bigG"}


@dataclass
class EncoderReport:
    encoder: str  # "CLIP-L", "CLIP-G", "T5", ...
    tokens: int
    chunks: list[str] = field(default_factory=list)  # the text of each 75-token chunk (CLIP)
    cut: str = ""  # text the encoder does not see (T5 past its limit)
    diffusers_cut: str = ""  # what diffusers' own 77-token truncation would drop (CLIP)

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "tokens": self.tokens, "chunks": self.chunks, "cut": self.cut, "diffusers_cut": self.diffusers_cut}


@dataclass
class TextReport:
    text: str
    text_without_loras: str
    loras: list[LoraTag]
    weighted: list[tuple[str, float]]  # fragments whose weight is not 1
    breaks: int
    schedule: list[tuple[int, str]]  # (end step, text); one entry without prompt editing
    encoders: list[EncoderReport]

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "text_without_loras": self.text_without_loras,
            "loras": [{"name": t.name, "te_weight": t.te_weight, "unet_weight": t.unet_weight} for t in self.loras],
            "weighted": [{"text": t, "weight": w} for t, w in self.weighted],
            "breaks": self.breaks,
            "schedule": [{"end_at_step": s, "text": t} for s, t in self.schedule],
            "encoders": [e.to_dict() for e in self.encoders],
        }


@dataclass
class PromptReport:
    family: Family
    prompt: TextReport
    negative: TextReport
    warnings: list[str]

    def to_dict(self) -> dict:
        return {
            "family": self.family.value, "prompt": self.prompt.to_dict(), "negative_prompt": self.negative.to_dict(),
            "warnings": self.warnings,
        }


def pipeline_tokenizers(pipe) -> dict[str, object]:
    """The tokenizers of a loaded pipeline, by attribute name."""
    return {name: getattr(pipe, name) for name in ("tokenizer", "tokenizer_2", "tokenizer_3") if getattr(pipe, name, None) is not None}


def load_tokenizers(source) -> dict[str, object]:
    """The tokenizers of a model source without loading its weights (a folder, or a single file's configs)."""
    import json
    from pathlib import Path

    import transformers

    from hayai.errors import ModelError

    folder = Path(source.path) if source.kind == "folder" else (Path(source.config) if source.config else None)
    if folder is None:
        from hayai.models.loading import SINGLE_FILE_CONFIG_REPOS, hub_snapshot

        repo = SINGLE_FILE_CONFIG_REPOS[source.family]
        folder = hub_snapshot(repo)
        if folder is None:
            raise ModelError(
                f"the tokenizers of {source.name} ({source.family.value}) come from {repo}, which is not in the local "
                f"Hugging Face cache: `hf download {repo} --exclude '*.safetensors' '*.bin'`, or pass --model-config DIR"
            )
    index = json.loads((folder / "model_index.json").read_text())
    out = {}
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        entry = index.get(name)
        if entry and entry[1] and (folder / name).is_dir():
            out[name] = getattr(transformers, entry[1]).from_pretrained(folder / name, local_files_only=True)
    return out


def _encoder_reports(family: Family, tokenizers: dict, fragments) -> list[EncoderReport]:
    reports = []
    names = _SDXL_NAMES if family is Family.SDXL else _ENCODER_NAMES
    for attribute, tokenizer in tokenizers.items():
        name = names.get(attribute, attribute)
        if attribute == "tokenizer_3":
            whole = t5_tokens(tokenizer, fragments, T5_MAX_LENGTH)
            reports.append(EncoderReport(name, whole.prompt_tokens, cut=whole.cut_text))
            continue
        tokens = clip_chunks(tokenizer, fragments)
        texts = [tokenizer.decode(c.ids[1 : 1 + c.prompt_tokens]) for c in tokens.chunks]
        flat = [t for c in tokens.chunks for t in c.ids[1 : 1 + c.prompt_tokens]]
        cut = tokenizer.decode(flat[CHUNK_LENGTH:]) if len(flat) > CHUNK_LENGTH else ""
        reports.append(EncoderReport(name, len(flat), texts, diffusers_cut=cut))
    return reports


def _text_report(family: Family, tokenizers: dict, text: str, steps: int, warnings: list[str], label: str) -> TextReport:
    parsed = parse_prompt(text)
    warnings.extend(f"{label}: {w}" for w in parsed.warnings)
    schedule = parsed.schedule(steps)
    weighted: list[tuple[str, float]] = []
    for entry in schedule:
        for fragment in parse_attention(entry.text):
            if not fragment.is_break and fragment.weight != 1.0 and fragment.text.strip():
                if (fragment.text, fragment.weight) not in weighted:
                    weighted.append((fragment.text, fragment.weight))
    final = parse_attention(schedule[-1].text)
    breaks = sum(f.is_break for f in final)
    for fragment_text, weight in weighted:
        if not 0 <= weight <= 2:
            warnings.append(f"{label}: weight {weight:.3g} on {fragment_text.strip()!r} is outside 0..2 (images tend to break)")
    encoders = _encoder_reports(family, tokenizers, final)
    for report in encoders:
        if report.cut:
            warnings.append(f"{label}: {report.encoder} reads {T5_MAX_LENGTH} tokens; this is cut: {report.cut!r}")
        if report.diffusers_cut:
            warnings.append(
                f"{label}: {report.tokens} {report.encoder} tokens make {len(report.chunks)} chunks, encoded separately; "
                f"the first {CHUNK_LENGTH} weigh most (plain diffusers would drop everything after them)"
            )
    if family is Family.SD3 and breaks:
        warnings.append(f"{label}: BREAK splits the CLIP chunks only; T5 reads the text as one sequence")
    return TextReport(
        text, parsed.text_without_loras, list(parsed.loras), weighted, breaks,
        [(e.end_at_step, e.text) for e in schedule], encoders,
    )


def check_prompt(prompt: str, negative_prompt: str, *, tokenizers: dict, family: Family, steps: int = 20) -> PromptReport:
    """Analyse a prompt pair for a model family, given that model's tokenizers (see `load_tokenizers`)."""
    family = Family(family)
    warnings: list[str] = []
    positive = _text_report(family, tokenizers, prompt, steps, warnings, "prompt")
    negative = _text_report(family, tokenizers, negative_prompt, steps, warnings, "negative prompt")
    words = re.findall(r"[a-z]+", positive.text_without_loras.lower())
    filler = [w for w in FILLER_WORDS if w in words]
    if filler:
        warnings.append(
            f"prompt: filler words ({', '.join(filler)}) spend tokens and add little; describe what you want to see instead"
        )
    if not negative_prompt.strip():
        warnings.append("negative prompt is empty: a few words for what to avoid (blurry, low quality, ...) usually help")
    if family is Family.SD3 and any(r.encoder == "T5" and r.tokens >= T5_DEFAULT_LENGTH for r in positive.encoders):
        warnings.append(f"prompt: over {T5_DEFAULT_LENGTH} T5 tokens, so T5 reads {T5_MAX_LENGTH} (slower encoding)")
    return PromptReport(family, positive, negative, warnings)
