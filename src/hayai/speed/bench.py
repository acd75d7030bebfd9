"""Speed levers measured against the exact run: the same prompt and seed, interleaved rounds, ratios.

A lever is `exact` or request fields joined by '+' (`step_cache=3`, `speed=balanced`,
`step_cache=3+token_merging=0.5`), typed by the field table; `tiny_vae=random` is TAESD's architecture
with random weights (for time only). An execution lever (`hayai.speed.execution`: `channels_last`, `compile`,
`openvino`) is a bare name, alone or joined the same way; every run states its execution levers, so the exact
run is the plain one whatever was measured before.

- `measure_time`: `Engine.generate` for every lever. After one untimed warm-up run, `repeats` rounds run
  every lever once, in an order rotated each round, so drift on a shared machine hits all alike. Per lever:
  median denoising seconds (the engine's phase timer) and end-to-end seconds (the whole call less its
  load phase: prompt encoding, denoising, decoding; a resident model loads nothing, and putting an
  execution lever on or off between runs is the bench's doing, not a run's: a compiled pipeline that runs
  plain next is loaded again, in that load phase), and the medians of their per-round ratios to the exact
  run of the same round (< 1: faster); the same for this process's CPU time, which other work disturbs less
  than wall time. `compile` compiles at its first call, a one-off cost that is not a run's either: a lever
  with it runs once untimed whenever the run before it was not compiled (a fresh pipeline), and the first
  of those warm-ups, less the lever's median timed run, is its `one_off_seconds`.
- `demo_quality`: adherence on the demo model's prompt set (`hayai.demo.adherence.evaluate`) for every
  lever, and the distance of each image to the exact run's image of the same prompt and seed.
- `bench_speed`: both for one model, as `hayai bench speed` runs them, kept in the store as one
  `SpeedMeasurement` per lever (adherence only on the demo model; on another model the quality is the
  distance of the timed images to the exact run's).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from hayai.errors import RequestError
from hayai.speed.execution import EXECUTION_LEVERS
from hayai.store.speed_measurements import SpeedMeasurement

__all__ = ["DEFAULT_LEVERS", "PROMPT", "SpeedBench", "TimedLevers", "bench_speed", "demo_quality", "distance",
           "execution_of", "is_demo_model", "lever_list", "measure_time", "parse_lever"]

DEFAULT_LEVERS = "exact,step_cache=2,step_cache=3,step_cache=4,token_merging=0.5,step_cache=3+token_merging=0.5"
PROMPT = "a photo of a red fox in a snowy forest, detailed, sharp focus"
_CONVERT = {"int": int, "float": float, "str": str, "bool": lambda v: {"true": True, "false": False}[v.lower()]}


def parse_lever(text: str) -> dict:
    """'exact' -> {}; 'step_cache=3+token_merging=0.5' -> the request fields, typed by the field table.
    `tiny_vae=random` is an AutoencoderTiny of TAESD's architecture with random weights (for time only).
    Execution levers (bare names) are not request fields: `execution_of` reads them."""
    from hayai.generation.fields import FIELD

    if text == "exact":
        return {}
    fields = {}
    for part in text.split("+"):
        if part in EXECUTION_LEVERS:
            continue
        name, _, value = part.partition("=")
        spec = FIELD.get(name)
        if spec is None or not value or spec.type not in _CONVERT:
            raise RequestError(f"lever {text!r}: {part!r} is not FIELD=VALUE of a request field (e.g. step_cache=3, "
                               f"speed=balanced, step_cache=3+token_merging=0.5) nor an execution lever "
                               f"({', '.join(EXECUTION_LEVERS)})")
        if (name, value) == ("tiny_vae", "random"):
            fields[name] = _random_taesd()
            continue
        try:
            fields[name] = _CONVERT[spec.type](value)
        except (ValueError, KeyError):
            raise RequestError(f"lever {text!r}: {name}={value!r} is not {_A_TYPE.get(spec.type, spec.type)}") from None
    return fields


def execution_of(text: str) -> frozenset[str]:
    """The execution levers a lever names ('channels_last+step_cache=3' -> {'channels_last'})."""
    return frozenset(part for part in text.split("+") if part in EXECUTION_LEVERS)


def lever_list(text: str) -> list[str]:
    """Comma-separated levers, `exact` first (every ratio is to it), each checked by `parse_lever`."""
    levers = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    levers = ["exact"] + [lever for lever in levers if lever != "exact"]
    for lever in levers:
        parse_lever(lever)
    return levers


def _random_taesd() -> str:
    """A folder with an AutoencoderTiny of TAESD's architecture (diffusers' defaults) and random weights."""
    import tempfile

    import torch
    from diffusers import AutoencoderTiny

    folder = Path(tempfile.gettempdir()) / "hayai-bench-random-taesd"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(folder)
    return str(folder)


_A_TYPE = {"int": "an integer", "float": "a number", "bool": "true or false"}


def lever_fields(lever: str) -> dict:
    """The request fields a lever runs with over the benchmark's own (size, steps): a few-step preset keeps the
    steps its LoRA sets (`speed=fast` at the exact run's 20 steps would time 20 LCM steps, not the preset)."""
    from hayai.speed.presets import FEW_STEP_PRESETS

    fields = parse_lever(lever)
    if fields.get("speed") in FEW_STEP_PRESETS and "steps" not in fields:
        fields["steps"] = None
    return fields


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _knobs(request, lever: str) -> dict:
    """What a lever ran with: the speed knobs, the sampler settings, the fields and execution levers it names."""
    from hayai.speed.presets import KNOBS

    names = ("speed", *KNOBS, "sampler", "schedule_type", "steps", "cfg_scale", *parse_lever(lever))
    knobs = {name: getattr(request, name) for name in dict.fromkeys(names)}
    return {**knobs, "execution": sorted(execution_of(lever))} if execution_of(lever) else knobs


@dataclass
class TimedLevers:
    rows: dict[str, dict]  # lever -> medians, ratios, rounds (the benchmark file's format)
    images: dict[str, object]  # lever -> its image of the first round
    exact: object  # the exact run's last GenerationResult (model hash, family, resolved request)


def measure_time(engine, levers: list[str], *, model: str | None, size: int | None, steps: int | None,
                 repeats: int, seed: int = 1, prompt: str = PROMPT, log=None) -> TimedLevers:
    """Time every lever (`levers[0]` is "exact") on `model` at `size` px and `steps` (None: the model's)."""
    from hayai.generation.request import GenerationRequest

    log = log or (lambda line: None)
    base = {"model": model, "steps": steps, "width": size, "height": size, "seed": seed}
    requests = {name: GenerationRequest(prompt, **{**base, **lever_fields(name)}) for name in levers}
    plain = engine.run_options(save=False, execution=frozenset())
    engine.generate(GenerationRequest(prompt, **{**base, "steps": 2}), plain)  # warm-up: load, first-use costs
    runs: dict[str, list[dict]] = {name: [] for name in levers}
    results, images, warm_ups = {}, {}, {}
    compiled = False  # whether the last run compiled (a compiled pipeline stays so until one runs plain)
    for round_ in range(repeats):
        order = levers[round_ % len(levers):] + levers[: round_ % len(levers)]
        for name in order:
            if "compile" in execution_of(name) and not compiled:  # its first call compiles: not a run's time
                start = time.perf_counter()
                warm = engine.generate(requests[name], dataclasses.replace(plain, execution=execution_of(name)))
                seconds = time.perf_counter() - start - warm.timings.get("load", 0.0)
                warm_ups.setdefault(name, seconds)
                log(f"round {round_ + 1}/{repeats} {name}: compiled in an untimed run of {seconds:.1f} s")
            compiled = "compile" in execution_of(name)
            stamps: list[float] = []  # process CPU seconds at the end of every denoising step

            def on_event(event, stamps=stamps):
                if event.phase == "denoise":
                    stamps.append(time.process_time())

            options = dataclasses.replace(plain, progress=on_event, execution=execution_of(name))
            start, start_cpu = time.perf_counter(), time.process_time()
            result = engine.generate(requests[name], options)
            load = result.timings.get("load", 0.0)
            runs[name].append({"end_to_end": time.perf_counter() - start - load, "denoise": result.timings["denoise"],
                               "decode": result.timings.get("vae_decode", 0.0),
                               "end_to_end_cpu": time.process_time() - start_cpu - load,
                               "step_cpu": (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None})
            results[name] = result
            images.setdefault(name, result.images[0].image)
            log(f"round {round_ + 1}/{repeats} {name}: {runs[name][-1]['end_to_end']:.1f} s")
    rows = {name: _time_row(runs[name], runs["exact"], _knobs(results[name].request, name)) for name in levers}
    for name, seconds in warm_ups.items():  # what the first call cost beyond a run
        rows[name]["one_off_seconds"] = round(max(0.0, seconds - rows[name]["end_to_end_seconds"]), 3)
    return TimedLevers(rows, images, results["exact"])


def _time_row(runs: list[dict], exact: list[dict], knobs: dict) -> dict:
    def ratios(key):
        return [run[key] / base[key] for run, base in zip(runs, exact)]

    row = {
        "request": knobs,
        "denoise_seconds": _median([r["denoise"] for r in runs]),
        "end_to_end_seconds": _median([r["end_to_end"] for r in runs]),
        "decode_seconds": _median([r["decode"] for r in runs]),
        "denoise_ratio": _median(ratios("denoise")),
        "end_to_end_ratio": _median(ratios("end_to_end")),
        "denoise_speedup": round(1 / statistics.median(ratios("denoise")), 3),
        "end_to_end_speedup": round(1 / statistics.median(ratios("end_to_end")), 3),
        # CPU time of this process: less disturbed by other work on a shared machine
        "end_to_end_cpu_seconds": _median([r["end_to_end_cpu"] for r in runs]),
        "step_cpu_seconds": None,
        "end_to_end_cpu_ratio": _median(ratios("end_to_end_cpu")),
        "step_cpu_ratio": None,
        "rounds": [{k: round(v, 3) for k, v in r.items() if v is not None} for r in runs],
    }
    if all(r["step_cpu"] is not None for r in runs + exact):  # two denoising steps or more
        row["step_cpu_seconds"] = _median([r["step_cpu"] for r in runs])
        row["step_cpu_ratio"] = _median(ratios("step_cpu"))
    return row


def distance(pairs: list[tuple[object, object]]) -> dict:
    """Mean PSNR (dB, over the pairs that differ; inf when every pair is identical) and mean SSIM of
    (exact image, lever image) pairs, and how many pairs are identical."""
    from hayai.speed.quality import psnr, ssim

    psnrs = [psnr(a, b) for a, b in pairs]
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"psnr_db": round(statistics.mean(finite), 2) if finite else math.inf,
            "identical_images": len(psnrs) - len(finite),
            "ssim": round(statistics.mean(ssim(a, b) for a, b in pairs), 4)}


_TIME_ONLY = "tiny_vae=random"  # random weights: its images say nothing about quality


def demo_quality(levers: list[str], *, seeds: int, steps: int | None = None, prompts: list[str] | None = None,
                 log=None) -> dict[str, dict]:
    """Adherence on the demo model (its card's CFG and sampler) for every lever (`levers[0]` is "exact"), and
    the distance of every image to the exact run's image of the same prompt and seed."""
    from hayai.demo import BUILTIN_MODEL
    from hayai.demo.adherence import evaluate

    log = log or (lambda line: None)
    images: dict[str, dict] = {}
    rows: dict[str, dict] = {}
    for name in levers:
        if _TIME_ONLY in name:
            rows[name] = {"not_measured": "no AutoencoderTiny was trained for the demo model's VAE"}
            continue
        kept = images.setdefault(name, {})
        report = evaluate(str(BUILTIN_MODEL), steps=steps, cfg_scale=None, sampler=None, seeds=seeds, prompts=prompts,
                          request_fields=lever_fields(name), run_options={"execution": execution_of(name)},
                          on_image=lambda prompt, seed, image, kept=kept: kept.__setitem__((prompt, seed), image))
        row = {"adherence_points": round(100 * statistics.mean(report.accuracy.values()), 2),
               "accuracy": {k: round(v, 4) for k, v in report.accuracy.items()},
               "images": report.images, "seconds": round(report.seconds, 2),
               "settings": {"steps": report.steps, "cfg_scale": report.cfg_scale, "sampler": report.sampler,
                            "schedule_type": report.schedule_type}}
        if name != "exact":
            row.update(distance([(images["exact"][key], image) for key, image in kept.items()]))
            row["adherence_change_points"] = round(row["adherence_points"] - rows["exact"]["adherence_points"], 2)
            row["seconds_ratio"] = round(row["seconds"] / rows["exact"]["seconds"], 3)
        rows[name] = row
        log(f"adherence {name}: {row['adherence_points']} points ({report.images} images)")
    return rows


def is_demo_model(source) -> bool:
    """Whether a resolved model is the shipped demo model, the one whose adherence can be scored."""
    from hayai.demo import BUILTIN_MODEL

    return source.path is not None and Path(source.path).resolve() == BUILTIN_MODEL.resolve()


@dataclass
class SpeedBench:
    measurements: list[SpeedMeasurement]  # one per lever, as stored
    quality: str  # how quality was measured, or why not
    details: dict[str, dict] = field(default_factory=dict)  # lever -> {"time": ..., "quality": ...}

    def to_dict(self) -> dict:
        return {"quality": self.quality, "levers": [m.to_dict() for m in self.measurements], "details": self.details}


def bench_speed(engine, *, model: str | None, levers: list[str], size: int | None = None, steps: int | None = None,
                repeats: int = 3, quality: bool = True, seeds: int = 2, seed: int = 1, prompts: list[str] | None = None,
                log=None) -> SpeedBench:
    """Measure `levers` (from `lever_list`) on `model` with `engine`, and keep every lever's figures in the
    engine's store. Quality: adherence and distance on the demo model's prompt set (or `prompts` of it) for
    the demo model, else the distance of the timed images to the exact run's; none with `quality=False`."""
    import torch

    import hayai

    if repeats < 1:
        raise RequestError(f"repeats={repeats} must be at least 1")
    if seeds < 1:
        raise RequestError(f"seeds={seeds} must be at least 1")
    source = engine.catalog.resolve(model, allow_pickle=engine.allow_pickle)
    timed = measure_time(engine, levers, model=model, size=size, steps=steps, repeats=repeats, seed=seed, log=log)
    exact = timed.exact
    if not quality:
        note, scores = "not measured (--no-quality)", {}
    elif is_demo_model(source):
        note = f"adherence on the demo model's prompt set ({seeds} seeds each) and distance to the exact run's images"
        scores = demo_quality(levers, seeds=seeds, steps=exact.request.steps, prompts=prompts, log=log)
    else:
        note = "distance of the timed image to the exact run's (same prompt and seed); adherence: demo model only"
        scores = {name: distance([(timed.images["exact"], image)]) for name, image in timed.images.items()
                  if name != "exact" and _TIME_ONLY not in name}
    measurements, details = [], {}
    for name, row in timed.rows.items():
        score = scores.get(name, {})
        details[name] = {"time": row, **({"quality": score} if score else {})}
        measurements.append(SpeedMeasurement(
            model=exact.model, model_hash=exact.model_hash, family=exact.family.value, width=exact.request.width,
            height=exact.request.height, steps=exact.request.steps, device_key=engine.device_spec.key,
            threads=torch.get_num_threads(), lever=name, request=row["request"], repeats=repeats,
            denoise_ratio=row["denoise_ratio"], end_to_end_ratio=row["end_to_end_ratio"],
            denoise_seconds=row["denoise_seconds"], end_to_end_seconds=row["end_to_end_seconds"],
            adherence_points=score.get("adherence_points"), psnr_db=score.get("psnr_db"), ssim=score.get("ssim"),
            hayai_version=hayai.__version__, torch_version=torch.__version__,
            one_off_seconds=row.get("one_off_seconds")))
    return SpeedBench(engine.store.record_speed(measurements), note, details)
