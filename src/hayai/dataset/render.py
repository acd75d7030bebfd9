"""Rendering a training dataset with a model: captioned images from a list of prompts.

    from hayai.dataset.render import read_prompts, render_dataset
    result = render_dataset(Engine(), read_prompts("prompts.txt"), "its-own", per_prompt=4,
                            settings={"model": "my-sd15-model", "steps": 30})

For a model's own few-step LoRA (`hayai train distill`) or as kohya's regularization images: image k of prompt
p (both from 0) is number N = p * per_prompt + k, `OUT/NNNNN.png` with seed `seed + N`, and its caption, the
prompt as plain text (`ParsedPrompt.plain_text`: no LoRA tags, no emphasis), is `NNNNN.txt` beside it: what
`scan_dataset` and `hayai train lora|distill` read. Every image is made by `Engine.generate`, so it carries
hayai's infotext and record (it reproduces alone) and its run is in the history.

Nothing is lost and an interrupted render continues where it stopped:
- `OUT/render.json` records the prompts, the model, the seed and the settings. A folder that holds files but no
  render.json was not rendered here and is refused. In one that has it, what a call leaves unset is what the
  folder was rendered with (so `render PROMPTS OUT` continues), and a setting it asks for otherwise is refused,
  named; prompts may be appended to the list, not changed;
- an image whose png (carrying its prompt and seed) and caption are there is done; a png without its caption
  (a run stopped between the two) gets its caption; any other file at a name the render needs is refused
  before anything runs, never replaced;
- the engine writes the png atomically and the caption is written under a temporary name and linked into
  place, so a kill leaves nothing half-written under a final name.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from hayai.errors import HayaiError, RequestError
from hayai.files import replace_json
from hayai.generation.fields import FIELD
from hayai.generation.imagefile import claim_name, read_image_metadata
from hayai.generation.options import CancelToken
from hayai.generation.request import MAX_SEED, GenerationRequest
from hayai.generation.results import ProgressCallback, ProgressEvent
from hayai.prompts.parser import parse_prompt

__all__ = ["MANIFEST", "RENDER_SETS", "RenderResult", "caption_of", "read_prompts", "render_dataset"]

MANIFEST = "render.json"
# request fields the render sets itself, for every image
RENDER_SETS = ("prompt", "seed", "output_dir", "filename_pattern", "image_format", "batch_size", "batch_count")


@dataclass
class RenderResult:
    folder: Path
    model: str  # the model's catalog name
    model_ref: str  # how to name it again: as the render was given it (a path made absolute), else its name
    seed: int  # image N has seed + N
    prompts: int
    per_prompt: int
    rendered: list[Path] = field(default_factory=list)  # the images this call made
    found: int = 0  # images that were there already
    captioned: list[Path] = field(default_factory=list)  # captions written for images found without one
    run_ids: list[int] = field(default_factory=list)  # the history's runs of this call
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False  # stopped by its CancelToken: a later call renders the rest

    @property
    def total(self) -> int:
        return self.prompts * self.per_prompt

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "model": self.model, "model_ref": self.model_ref, "seed": self.seed,
                "prompts": self.prompts, "per_prompt": self.per_prompt, "images": self.total, "found": self.found,
                "rendered": [str(p) for p in self.rendered], "captioned": [str(p) for p in self.captioned],
                "run_ids": self.run_ids, "warnings": self.warnings, "interrupted": self.interrupted}


def read_prompts(path: Path) -> list[str]:
    """The prompts of a text file, one a line; blank lines and lines starting with '#' are skipped."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise RequestError(f"prompts file {path} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    except OSError as error:
        raise RequestError(f"prompts file {path} cannot be read ({error.strerror or error})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    if not prompts:
        raise RequestError(f"prompts file {path} holds no prompts: write one a line "
                           "(blank lines and lines starting with # are skipped)")
    return prompts


def caption_of(prompt: str, steps: int) -> str:
    """The caption of an image of `prompt` made in `steps` steps: its plain words (`ParsedPrompt.plain_text`)."""
    return parse_prompt(prompt).plain_text(steps)


def render_dataset(engine, prompts: list[str], out: Path, *, per_prompt: int | None = None, settings: dict | None = None,
                   seed: int | None = None, prompts_file: Path | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> RenderResult:
    """Render `per_prompt` images of every prompt into `out` with their captions, or the part still missing.

    `settings` are request fields (hayai.generation.fields) for every image, but those in `RENDER_SETS`; `seed` is
    image 0's (-1 as None). In a folder rendered before, what a call leaves unset is what the folder was rendered
    with, and what it sets must be the same; in a new one, unset means 1 image a prompt, a random seed, the default
    model and the request's defaults. `progress` gets the model's load, the predicted time of all the images
    ("plan") and an event per image rendered ("render", done, the number this call renders, the path)."""
    # 1. the settings: this call's, else the folder's, else the defaults; every request checked before any work
    out = Path(out).expanduser()
    settings = dict(settings or {})
    taken = sorted(set(settings) & set(RENDER_SETS))
    if taken:
        raise RequestError(f"settings: {', '.join(taken)} are set by the render for every image; leave them out")
    if not prompts:
        raise RequestError("prompts is empty: a dataset needs at least one prompt")
    stored = _read_manifest(out)
    model = settings.pop("model", None)
    model = _as_given(model) if model else model
    if stored:
        settings = {**stored["settings"], **settings}
        model = stored["model"] if model is None else model
    if per_prompt is None:
        per_prompt = stored["per_prompt"] if stored else 1
    if not isinstance(per_prompt, int) or isinstance(per_prompt, bool) or per_prompt < 1:
        raise RequestError(f"per_prompt={per_prompt!r} must be a whole number of images, at least 1")
    if seed is None or seed == -1:
        seed = stored["seed"] if stored else random.SystemRandom().randint(0, MAX_SEED)
    if not 0 <= seed <= MAX_SEED:
        raise RequestError(f"seed={seed} must be -1 (random) or between 0 and {MAX_SEED}")
    requests = [GenerationRequest.from_dict({**settings, "model": model, "prompt": prompt}) for prompt in prompts]
    for prompt in prompts:
        if not caption_of(prompt, 1):
            raise RequestError(f"prompt {prompt!r} has no words once its tags are taken out: its images would have "
                               "empty captions; give it some")
    _find_loras(requests, engine.store)
    # 2. the folder: the same settings as before, no file in the way; then its manifest and missing captions
    source = engine.catalog.resolve(model, allow_pickle=engine.allow_pickle, config=settings.get("model_config"))
    manifest = {"prompts_file": str(Path(prompts_file).expanduser().resolve()) if prompts_file else None,
                "model": model, "model_name": source.name, "per_prompt": per_prompt, "seed": seed,
                "settings": json.loads(json.dumps(settings)), "prompts": list(prompts), "images": len(prompts) * per_prompt}
    if stored:
        _check_same(out, stored, manifest)
    result = RenderResult(out, source.name, model or source.name, seed, len(prompts), per_prompt)
    todo, to_caption = _survey(out, prompts, per_prompt, seed, result)  # refuses a file in the way before any work
    if stored != manifest:
        out.mkdir(parents=True, exist_ok=True)
        _write_manifest(out, manifest)
    for png, steps, prompt in to_caption:
        result.captioned.append(_write_caption(png, caption_of(prompt, steps)))
    # 3. the missing images, each a run of its own (in the history), its caption written once it is saved
    emit = progress or (lambda event: None)
    if todo:
        emit(ProgressEvent("render", 0, len(todo)))
    for done, (number, prompt_index) in enumerate(todo):
        request = replace(requests[prompt_index], seed=_seed(seed, number), output_dir=str(out),
                          filename_pattern="{index:05d}", image_format="png")
        options = engine.run_options(first_index=number, cancel=cancel,
                                     progress=_forward(emit, len(todo) if done == 0 else 0))
        generated = engine.generate(request, options)
        if generated.run_id is not None:
            result.run_ids.append(generated.run_id)
        result.warnings += [w for w in generated.warnings if w not in result.warnings]
        if generated.interrupted:
            result.interrupted = True
            break
        (image,) = generated.images
        if image.path != _png(out, number):
            raise HayaiError(f"{_png(out, number)} appeared while this image was rendered (is another render writing "
                             f"into {out}?); it was saved as {image.path} instead, with no caption")
        _write_caption(image.path, caption_of(prompts[prompt_index], generated.request.steps))
        result.rendered.append(image.path)
        emit(ProgressEvent("render", done + 1, len(todo), str(image.path)))
    return result


def _find_loras(requests: list[GenerationRequest], store) -> None:
    """Every LoRA the prompts and settings name must be found before the first image, not at prompt 40."""
    from hayai.lora import LoraSpec, find_lora

    names = {LoraSpec.parse(text).name for text in requests[0].loras}
    for request in requests:
        names.update(tag.name for text in (request.prompt, request.negative_prompt) for tag in parse_prompt(text).loras)
    for name in sorted(names):
        find_lora(name, store)


def _seed(seed: int, number: int) -> int:
    return (seed + number) % (MAX_SEED + 1)  # wraps as a request's seeds do


def _png(out: Path, number: int) -> Path:
    return out / f"{number:05d}.png"


def _as_given(model: str) -> str:
    """A model named by a path is recorded by its absolute path, so a later call from elsewhere finds it."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _forward(emit, images_left: int):
    """The engine's progress events a render shows: the model's load, and (for its first image) the plan's
    prediction for all the images left."""
    def on_event(event: ProgressEvent) -> None:
        if event.phase == "load":
            emit(event)
        elif event.phase == "plan" and images_left and event.seconds is not None:
            emit(replace(event, seconds=event.seconds * images_left))
    return on_event


def _survey(out: Path, prompts: list[str], per_prompt: int, seed: int, result: RenderResult):
    """(numbers to render with their prompt's index, pngs to caption with their steps and prompt); counts the
    images found in `result`. A file at a name the render needs that it did not write is refused here."""
    todo, to_caption = [], []
    for prompt_index, prompt in enumerate(prompts):
        for k in range(per_prompt):
            number = prompt_index * per_prompt + k
            png, own_seed = _png(out, number), _seed(seed, number)
            txt = png.with_suffix(".txt")
            if not png.exists():
                if txt.exists():
                    raise RequestError(f"{txt} has no image beside it, so the render would write over it: delete it to "
                                       f"render image {number} again, or move it out of {out}")
                todo.append((number, prompt_index))
                continue
            steps = _rendered_here(png, prompt, own_seed)
            if steps is None:
                raise RequestError(f"{png} is in the way: it is not the image of prompt {prompt!r} with seed {own_seed} "
                                   f"that the render puts there; move it out of {out} (the render never replaces a "
                                   "file it did not write)")
            result.found += 1
            if not txt.exists():
                to_caption.append((png, steps, prompt))
    return todo, to_caption


def _rendered_here(png: Path, prompt: str, seed: int) -> int | None:
    """The steps of `png` if its hayai record says it is the image of `prompt` with `seed`, else None."""
    try:
        record = read_image_metadata(png).hayai
        request, image = record["request"], record["image"]
        if request["prompt"] == prompt and image["seed"] == seed and isinstance(request["steps"], int):
            return request["steps"]
    except (HayaiError, KeyError, TypeError):  # not an image, no record, or not one of hayai's
        pass
    return None


def _write_caption(png: Path, caption: str) -> Path:
    """`caption` as the new file beside `png`: written whole under a temporary name, then linked into place (a
    name that is taken is never replaced)."""
    txt = png.with_suffix(".txt")
    temp = txt.with_name(f".{txt.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "x", encoding="utf-8") as file:
            file.write(caption + "\n")
            file.flush()
            os.fsync(file.fileno())
        claim_name(temp, txt, next_free=False)
    finally:
        temp.unlink(missing_ok=True)
    return txt


def _read_manifest(out: Path) -> dict | None:
    """The folder's render.json; None for a new or empty folder. A folder with other files is refused."""
    if out.exists() and not out.is_dir():
        raise RequestError(f"out={str(out)!r} is a file; give a new folder (or one rendered before) for the dataset")
    path = out / MANIFEST
    if not path.is_file():
        if out.is_dir() and any(not entry.name.startswith(".") for entry in out.iterdir()):
            raise RequestError(f"{out} holds files and no {MANIFEST}, so it was not rendered here: render into a new "
                               "or empty folder (the images and captions would mix with what is there)")
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        for key, kind in (("seed", int), ("per_prompt", int), ("settings", dict), ("prompts", list)):
            if not isinstance(stored, dict) or not isinstance(stored.get(key), kind):
                raise ValueError(f"no {key}")
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HayaiError(f"{path} cannot be read ({error}), so the render cannot tell what the folder holds: "
                         "render into a new folder") from None
    return stored


def _setting(name: str, value) -> str:
    return f"{name} unset" if value is None else f"{name}={value!r}"


def _same_again(flag: str | None, name: str, value) -> str:
    """How to ask for `value` again: its CLI flag, or the setting's name where it has none."""
    if flag is None:
        return f"with {_setting(name, value)}"
    if value is None or value is False:
        return f"without {flag}"
    if value is True:
        return f"with {flag}"
    return "with " + " ".join(f"{flag} {item}" for item in (value if isinstance(value, list) else [value]))


def _write_manifest(out: Path, manifest: dict) -> None:
    replace_json(out / MANIFEST, manifest, indent=2, ensure_ascii=False)  # the render's own file: replaced whole


_FLAGS = {"model_name": "--model", "per_prompt": "--per-prompt", "seed": "--seed"}


def _check_same(out: Path, stored: dict, wanted: dict) -> None:
    """Refuse to continue `out` with settings other than those it was rendered with, naming the first that differs."""
    pairs = [(name, stored.get(name), wanted[name]) for name in ("model_name", "per_prompt", "seed")]
    old, new = stored.get("settings") or {}, wanted["settings"]
    pairs += [(name, old.get(name), new.get(name)) for name in sorted(set(old) | set(new))]
    for name, before, now in pairs:
        if before != now:
            shown = "model" if name == "model_name" else name
            flag = _FLAGS.get(name) or (FIELD[name].flags[0] if name in FIELD and FIELD[name].flags else None)
            again = stored.get("model") or before if name == "model_name" else before  # a model by the path it was given
            raise RequestError(f"{out} was rendered with {_setting(shown, before)}, this call has {_setting(shown, now)}: "
                               f"continue {_same_again(flag, shown, again)}, or render into another folder")
    before_prompts = stored.get("prompts") or []
    for number, (before, now) in enumerate(zip(before_prompts, wanted["prompts"]), start=1):
        if before != now:
            raise RequestError(f"{out} was rendered with prompt {number} {before!r}, the prompts now have {now!r}: "
                               "prompts may be added at the end, not changed; render into another folder")
    if len(wanted["prompts"]) < len(before_prompts):
        raise RequestError(f"{out} was rendered from {len(before_prompts)} prompts, the file now has "
                           f"{len(wanted['prompts'])}: prompts may be added at the end, not taken away")
