"""Few-step LoRAs and models (LCM, TCD, Hyper-SD, Lightning, Turbo): recognised, and the settings they need.

Distilled weights sample in 1-8 steps, but only with the sampler, schedule and guidance they were
distilled for; at 20 steps and CFG 7 they burn. So when a request uses one, its settings fill what the
request leaves unset (over the model card's), and a warning names any setting the user moved outside
the range that works. Recognition reads, in order: hayai's own `hayai.few_step` metadata (JSON, written
by distillation), the kohya metadata (`ss_output_name`, `modelspec.title`, `modelspec.description`,
`ss_training_comment`), then the file or folder name ("lcm-lora-sdv1-5", "Hyper-SD15-8steps-CFG-lora",
"sdxl_lightning_4step_lora", "sd-turbo"). The settings follow each method's model card and diffusers'
docs (REFERENCE: wave2-ecosystem.md 6.3).

"LCM", "TCD" and "Hyper-SD" are jargon, so the word alone is evidence. "Lightning" and "Turbo" are
ordinary words a style LoRA may carry ("lightning_bolts", "turbo_car_sdxl"), and a few-step reading would
change its steps and guidance, so a LoRA's name must also give a step count ("sdxl_lightning_4step_lora")
or put a family just before the word ("sdxl_lightning", "sd_xl_turbo", "FLUX.1-Turbo"). A checkpoint's
name needs only the word: merges are named "...Lightning" and "...Turbo" for their distillation
("juggernautXL_v9Rdphoto2Lightning"; camelCase is split into words).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["METADATA_KEY", "FewStep", "detect", "detect_file", "detect_text", "for_model", "for_request"]

METADATA_KEY = "hayai.few_step"  # a LoRA's metadata entry: {"method", "steps", "cfg_scale", "sampler", "schedule_type"}
_TEXT_KEYS = ("ss_output_name", "modelspec.title", "modelspec.description", "ss_training_comment")
_GENERIC_STEMS = {"pytorch_lora_weights", "diffusion_pytorch_model", "model", "lora", "adapter_model"}


@dataclass(frozen=True)
class FewStep:
    method: str  # "LCM", "TCD", "Hyper-SD", "Lightning", "Turbo"
    steps: int
    cfg_scale: float | None  # None: the model's own (Flux, whose guidance is distilled)
    sampler: str  # an A1111 name (hayai.generation.samplers)
    schedule_type: str
    steps_range: tuple[int, int]  # where it works
    cfg_range: tuple[float, float]
    samplers: tuple[str, ...]  # samplers it works with
    source: str = ""  # what was recognised: "x.safetensors (metadata ss_output_name)", "x.safetensors (name)"
    kind: str = "LoRA"  # or "model"

    @property
    def recommended(self) -> dict:
        """Request fields it needs, in the model card's form (`GenerationRequest.resolve(recommended=...)`)."""
        settings = {"steps": self.steps, "cfg_scale": self.cfg_scale, "sampler": self.sampler,
                    "schedule_type": self.schedule_type}
        return {key: value for key, value in settings.items() if value is not None}  # (Flux: its own guidance)

    def warnings(self, request) -> list[str]:
        """What in a resolved request falls outside the range this method works in."""
        what = f"{self.source} is a {self.method} few-step {self.kind}"
        found = []
        low, high = self.steps_range
        if not low <= request.steps <= high:
            found.append(f"{what}: steps={request.steps} is outside {low}-{high}, where it works (it needs {self.steps})")
        low, high = self.cfg_range
        if self.cfg_scale is not None and not low <= request.cfg_scale <= high:
            found.append(f"{what}: cfg_scale={request.cfg_scale:g} is outside {low:g}-{high:g}, where it works "
                         f"(it needs {self.cfg_scale:g}); the image may burn")
        if request.sampler not in self.samplers:
            found.append(f"{what}: sampler {request.sampler!r} is not one it was distilled for "
                         f"({', '.join(self.samplers)})")
        cached = [f"step_cache={request.step_cache}"] if request.step_cache and request.step_cache > 1 else []
        cached += [f"block_cache={request.block_cache:g}"] if getattr(request, "block_cache", None) else []
        if cached:
            found.append(f"{what}: step caching ({', '.join(cached)}) reuses features across the few large "
                         "steps of a distilled model, which costs far more quality than at 20 steps")
        return found


_STEPS_IN_NAME = re.compile(r"(\d+)[-_ ]?steps?")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")  # "dreamshaperXL_lightningDPM" -> words
_FAMILY_WORDS = {"sd", "xl", "sdxl", "sd15", "sd2", "sd21", "sd3", "sd35", "flux", "large", "medium"}


def _named_steps(text: str, default: int) -> int:
    match = _STEPS_IN_NAME.search(text)
    return int(match[1]) if match else default


def _qualified(word: str, words: list[str], lowered: str) -> bool:
    """Whether an ordinary `word` ("lightning", "turbo") names a distillation in a LoRA's name: a step count,
    or a family among the three words before it ("sd3.5_large_turbo": sd3, 5, large)."""
    if _STEPS_IN_NAME.search(lowered):
        return True
    at = words.index(word)
    return bool(_FAMILY_WORDS.intersection(words[max(0, at - 3):at]))


def detect_text(text: str, source: str = "", kind: str = "LoRA") -> FewStep | None:
    """The few-step method a name or description names, or None; `kind` "model" (a checkpoint's name) takes
    "Lightning" and "Turbo" alone, "LoRA" wants them qualified (the module's docstring says why)."""
    lowered = _CAMEL.sub(" ", text).lower()
    ordered = [word for word in re.split(r"[^a-z0-9]+", lowered) if word]
    words = set(ordered)
    ordinary = lambda word: word in words and (kind == "model" or _qualified(word, ordered, lowered))  # noqa: E731
    if re.search(r"hyper[-_ ]?(sd|flux)", lowered):  # Hyper-SD15/SDXL/SD3, Hyper-FLUX.1-dev
        if "cfg" in words:  # Hyper-SD's CFG-preserving LoRAs (8 and 12 steps): guidance 5-8, negative prompts work
            steps = _named_steps(lowered, 8)
            return FewStep("Hyper-SD", steps, 6.0, "DDIM", "SGM Uniform", (steps // 2, steps * 2), (4.0, 8.0),
                           ("DDIM", "Euler", "TCD"), source, kind)
        steps = _named_steps(lowered, 1)
        if steps == 1:  # the 1-step unified LoRA samples with TCD
            return FewStep("Hyper-SD", 1, 1.0, "TCD", "SGM Uniform", (1, 8), (1.0, 1.0), ("TCD",), source, kind)
        return FewStep("Hyper-SD", steps, 1.0, "DDIM", "SGM Uniform", (max(1, steps // 2), steps * 2), (1.0, 1.0),
                       ("DDIM", "Euler", "TCD"), source, kind)
    if ordinary("lightning"):
        steps = _named_steps(lowered, 4)
        return FewStep("Lightning", steps, 1.0, "Euler", "SGM Uniform", (steps, steps * 2), (1.0, 1.0),
                       ("Euler",), source, kind)
    if "tcd" in words:
        return FewStep("TCD", 4, 1.0, "TCD", "Uniform", (2, 8), (1.0, 1.5), ("TCD",), source, kind)
    if "lcm" in words:
        return FewStep("LCM", 4, 1.0, "LCM", "Uniform", (2, 8), (1.0, 2.0), ("LCM",), source, kind)
    if ordinary("turbo"):
        return FewStep("Turbo", 4, 1.0, "Euler a", "SGM Uniform", (1, 4), (1.0, 1.0), ("Euler a", "Euler"), source, kind)
    return None


def _from_metadata_key(value: str, source: str, kind: str) -> FewStep | None:
    try:
        data = json.loads(value)
        named = detect_text(str(data["method"]), source, "model")  # the method's own name: no qualifier needed
    except (ValueError, KeyError, TypeError):
        return None
    if named is None:
        return None
    changes = {k: data[k] for k in ("steps", "cfg_scale", "sampler", "schedule_type") if k in data}
    return replace(named, kind=kind, **changes)


def detect(name: str, metadata: dict[str, str] | None = None, *, kind: str = "LoRA") -> FewStep | None:
    """The few-step method of weights called `name` (a file or folder path) with this metadata, or None;
    `kind` is "LoRA" or "model"."""
    metadata = metadata or {}
    path = Path(name)
    label = path.name
    if METADATA_KEY in metadata:
        found = _from_metadata_key(metadata[METADATA_KEY], f"{label} (metadata {METADATA_KEY})", kind)
        if found is not None:
            return found
    for key in _TEXT_KEYS:
        if metadata.get(key):
            found = detect_text(metadata[key], f"{label} (metadata {key})", kind)
            if found is not None:
                return found
    stem = path.stem if path.suffix in (".safetensors", ".ckpt", ".pt", ".bin") else path.name
    text = f"{path.parent.name} {stem}" if stem.lower() in _GENERIC_STEMS else stem
    return detect_text(text, f"{label} (name)", kind)


def detect_file(path: Path) -> FewStep | None:
    """The few-step method of a LoRA or checkpoint file, from its safetensors metadata and its name."""
    metadata = {}
    if path.suffix == ".safetensors" and path.is_file():
        from hayai.models.headers import safetensors_header

        metadata = safetensors_header(path)[1] or {}
    return detect(str(path), metadata)


def for_flow_matching(found: FewStep, family=None) -> FewStep:
    """The settings for a flow-matching family (SD3, Flux): the sampler is the flow Euler (their distilled
    weights, e.g. SD3.5 Large Turbo or Hyper-SD3, sample with it); the steps and guidance stay, but on Flux.
    Flux's `cfg_scale` is its distilled guidance (FluxPipeline's guidance_scale), not CFG: its few-step LoRAs
    (FLUX.1-Turbo-Alpha, Hyper-FLUX) keep the model's guidance, so none is set or warned about, and a Turbo
    LoRA for Flux takes 8 steps (Turbo-Alpha's card; SD-Turbo's 1-4 are for its own models)."""
    from hayai.models.families import Family

    flow = replace(found, sampler="Euler", schedule_type="Simple", samplers=("Euler",))
    if family == Family.FLUX:
        steps = 8 if found.method == "Turbo" else found.steps
        flow = replace(flow, steps=steps, steps_range=(max(1, steps // 2), steps * 2) if found.method == "Turbo"
                       else found.steps_range, cfg_scale=None, cfg_range=(0.0, float("inf")))
    return flow


def for_request(request, source, find_lora) -> FewStep | None:
    """The few-step method a request uses: its first few-step LoRA (the `loras` field, then the prompts'
    <lora:...> tags; `find_lora(name) -> Path`), else its model (`source`, a ModelSource: by name), else None."""
    from hayai.lora import LoraSpec, combine_specs
    from hayai.lora.formats import LoraError
    from hayai.models.families import FAMILY_INFO
    from hayai.prompts.parser import parse_prompt

    specs = combine_specs([LoraSpec.parse(text) for text in request.loras],
                          parse_prompt(request.prompt).loras + parse_prompt(request.negative_prompt).loras)
    found = None
    for spec in specs:
        try:
            path = Path(find_lora(spec.name))
        except LoraError:
            continue  # not found: loading it fails later with the same error, inside the recorded run
        found = detect_file(path)
        if found is not None:
            break
    if found is None:
        found = detect(source.name, kind="model")
    if found is not None and FAMILY_INFO[source.family].flow_matching:
        found = for_flow_matching(found, source.family)
    return found


def _distilled_from(metadata: dict) -> str | None:
    """The model hash a hayai-distilled LoRA names in its few-step metadata, or None."""
    try:
        return json.loads(metadata.get(METADATA_KEY, "{}")).get("model_hash")
    except (ValueError, AttributeError):
        return None


def for_model(family, model_hash, entries) -> tuple[object, FewStep] | None:
    """The few-step LoRA of the catalog `entries` (`hayai.lora.catalog.LoraEntry`, with their metadata) that
    `speed=fast` uses for a model of `family`: one distilled from this very model (`model_hash()`, called only
    if some LoRA was distilled by hayai), else one made for the family (its kohya or modelspec metadata, else
    its layers' shapes). None when the catalog has none; (entry, method) otherwise."""
    from hayai.lora.inspect import detect_lora_family, family_from_metadata

    candidates = []
    for entry in entries:
        if entry.problem:
            continue
        found = detect(str(entry.path), entry.metadata)
        if found is not None:
            candidates.append((entry, found))
    distilled = [(entry, found) for entry, found in candidates if _distilled_from(entry.metadata)]
    if distilled:
        wanted = model_hash()
        for entry, found in distilled:
            if _distilled_from(entry.metadata) == wanted:
                return entry, found
    for entry, found in candidates:
        if _distilled_from(entry.metadata):
            continue  # distilled from another model: its steps were learnt from that model's outputs
        base = family_from_metadata(entry.metadata)
        if base is None:
            from hayai.lora.formats import read_lora_file, split_layers

            try:
                base, _ = detect_lora_family(split_layers(read_lora_file(entry.path))[0], entry.metadata)
            except (OSError, ValueError):
                continue
        if base == family:
            return entry, found
    return None
