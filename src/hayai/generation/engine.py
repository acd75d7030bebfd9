"""The engine: a request in, saved and logged images out.

`Engine.generate` reads like a diffusers pipeline call, in numbered steps:
1. resolve the model the request names, 2. load it (kept resident for the next request),
3. resolve the request against the model (defaults, sampler, random seed), 4. run the pipeline once
per batch, timing each phase, 5. save every image atomically with its A1111 infotext and the full
request, 6. log the run. A failure at any step is logged too, and never leaves a half-written file.

The pipeline call itself is the plain diffusers call (see `pipeline_kwargs`), so an image from the engine
is pixel-identical to one from diffusers with the same settings; the engine only observes it through
hooks and the step callback.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hayai import __version__, paths
from hayai.errors import HayaiError
from hayai.generation.encoding import encode_overrides
from hayai.generation.imagefile import next_index, read_image_metadata, save_image, unique_path
from hayai.generation.infotext import format_infotext, parse_infotext, request_from_infotext, request_to_params
from hayai.generation.request import GenerationRequest
from hayai.generation.samplers import build_scheduler
from hayai.generation.timing import MemoryReading, PeakMemory, PhaseTimer
from hayai.models.catalog import Catalog, is_placeholder, model_hash
from hayai.models.families import FAMILY_INFO, Family
from hayai.models.loading import ModelSource, load_pipeline, native_size

__all__ = ["Engine", "GenerationResult", "GeneratedImage", "LoadedModel", "ProgressEvent", "pipeline_kwargs"]


@dataclass(frozen=True)
class ProgressEvent:
    phase: str  # "load", "denoise", "save"
    done: int
    total: int
    detail: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class LoadedModel:
    source: ModelSource
    pipe: object
    sha256: str
    device: str
    dtype: str
    base_scheduler_config: dict
    native_size: tuple[int, int]

    @property
    def family(self) -> Family:
        return self.source.family

    @property
    def flow_matching(self) -> bool:
        return FAMILY_INFO[self.source.family].flow_matching

    @property
    def placeholder(self) -> bool:
        return is_placeholder(self.source)


@dataclass
class GeneratedImage:
    path: Path | None  # None when the run was not saved
    seed: int
    index: int  # position in the run (0-based)
    infotext: str
    image: object = field(repr=False)  # PIL.Image.Image


@dataclass
class GenerationResult:
    run_id: int | None
    request: GenerationRequest  # resolved: concrete seed, sampler, size
    images: list[GeneratedImage]
    model: str
    model_hash: str
    family: Family
    device: str
    dtype: str
    timings: dict[str, float]
    peak_memory: MemoryReading
    placeholder: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "request": self.request.to_dict(),
            "images": [{"path": str(i.path) if i.path else None, "seed": i.seed, "index": i.index} for i in self.images],
            "model": self.model,
            "model_hash": self.model_hash[:10],
            "family": self.family.value,
            "device": self.device,
            "dtype": self.dtype,
            "timings": self.timings,
            "peak_memory_bytes": self.peak_memory.peak_bytes,
            "peak_memory_kind": self.peak_memory.kind,
            "placeholder": self.placeholder,
            "warnings": self.warnings,
        }


def default_device() -> tuple[str, str]:
    """(device, dtype) to run on until the planner decides: the GPU in half precision, else CPU fp32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps", "float16"
    return "cpu", "float32"


def pipeline_kwargs(request: GenerationRequest, seeds: list[int]) -> dict:
    """The diffusers call for one batch of a resolved request: the one place the mapping lives.

    Each image gets its own CPU generator seeded with its own seed (A1111: image i gets seed + i), so
    an image depends only on its seed, on any device.
    """
    import torch

    return dict(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=float(request.cfg_scale),
        width=request.width,
        height=request.height,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        # A1111 counts the last layer as 1; diffusers counts layers skipped
        **({"clip_skip": request.clip_skip - 1} if request.clip_skip > 1 else {}),
    )


class Engine:
    """Generates images. Keeps the last model resident, so a series of requests loads it once."""

    def __init__(self, *, store=None, device: str | None = None, dtype: str | None = None, allow_pickle: bool = False):
        from hayai.store import Store

        self.store = store if store is not None else Store()
        self.catalog = Catalog(self.store)
        auto_device, auto_dtype = default_device()
        self.device = device or auto_device
        self.dtype = dtype or (auto_dtype if device in (None, auto_device) else "float32")
        self.allow_pickle = allow_pickle
        self._loaded: LoadedModel | None = None

    # -- 1 + 2: resolve and load -----------------------------------------------------------------
    def load(self, model: str | None = None, *, model_config: str | None = None, progress: ProgressCallback | None = None) -> LoadedModel:
        source = self.catalog.resolve(model, allow_pickle=self.allow_pickle, config=model_config)
        if self._loaded is not None and self._loaded.source == source:
            return self._loaded
        self._loaded = None  # drop the old pipeline before loading the next one
        emit = progress or (lambda event: None)
        emit(ProgressEvent("load", 0, 1, source.name))
        import torch

        pipe = load_pipeline(source, torch_dtype=getattr(torch, self.dtype))
        pipe.to(self.device)
        self._loaded = LoadedModel(
            source=source,
            pipe=pipe,
            sha256=model_hash(self.store, source.path),
            device=self.device,
            dtype=self.dtype,
            base_scheduler_config=dict(pipe.scheduler.config),
            native_size=native_size(pipe),
        )
        emit(ProgressEvent("load", 1, 1, source.name))
        return self._loaded

    # -- the run ---------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        save: bool = True,
        _keep: set[int] | None = None,
    ) -> GenerationResult:
        emit = progress or (lambda event: None)
        timer = PhaseTimer(sync=self._sync)
        memory = PeakMemory(self._torch_device())
        memory.reset()
        with timer.phase("load"):
            loaded = self.load(request.model, model_config=request.model_config, progress=emit)
        resolved = request.resolve(loaded.family, loaded.native_size)
        pipe = loaded.pipe
        pipe.scheduler = build_scheduler(
            resolved.sampler, resolved.schedule_type, loaded.base_scheduler_config, loaded.flow_matching
        )
        seeds = resolved.seeds()
        run_id = self.store.start_run(
            "generate", request=resolved.to_dict(), model=loaded.source.name, model_hash=loaded.sha256, device=self.device
        )
        images: list[GeneratedImage] = []
        status, error = "error", None
        try:
            out_dir = Path(resolved.output_dir).expanduser() if resolved.output_dir else paths.outputs_dir()
            index = next_index(out_dir) if save else 0
            total_steps = resolved.steps * resolved.batch_count
            for batch in range(resolved.batch_count):
                batch_seeds = seeds[batch * resolved.batch_size : (batch + 1) * resolved.batch_size]
                pil_images = self._run_batch(pipe, loaded.family, resolved, batch_seeds, timer, emit, batch, total_steps)
                for offset, (seed, image) in enumerate(zip(batch_seeds, pil_images)):
                    position = batch * resolved.batch_size + offset
                    if _keep is not None and position not in _keep:
                        continue
                    with timer.phase("save"):
                        generated = self._finish_image(image, resolved, loaded, seed, position, offset, out_dir, index, save)
                    images.append(generated)
                    index += 1
                    emit(ProgressEvent("save", len(images), len(_keep) if _keep else len(seeds), str(generated.path or "")))
            status = "ok"
        except KeyboardInterrupt:
            status, error = "interrupted", "interrupted by the user"
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            reading = memory.read()
            self.store.finish_run(
                run_id,
                status=status,
                seeds=seeds,
                timings=timer.as_dict(),
                peak_memory_bytes=reading.peak_bytes,
                outputs=[str(i.path) for i in images if i.path],
                error=error,
            )
        warnings = []
        if loaded.placeholder:
            warnings.append(
                "no model is installed: this image comes from a tiny placeholder with random weights, so it is noise. "
                "Add a model with `hayai models add PATH`."
            )
        return GenerationResult(
            run_id, resolved, images, loaded.source.name, loaded.sha256, loaded.family, self.device, self.dtype,
            timer.as_dict(), reading, loaded.placeholder, warnings,
        )

    def _run_batch(self, pipe, family, request, seeds, timer, emit, batch, total_steps):
        """One pipeline call; charges text encoding (hooks), denoising (to the last step) and decoding."""
        encoders = [getattr(pipe, name, None) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
        encoders = [e for e in encoders if e is not None]
        before_encode = timer.seconds["text_encode"]
        last_step = [0.0]

        def on_step_end(_pipe, step, _timestep, _kwargs):
            last_step[0] = timer.now()
            emit(ProgressEvent("denoise", batch * request.steps + step + 1, total_steps))
            return {}

        start = timer.now()
        with timer.hooked(encoders, "text_encode"):
            kwargs = encode_overrides(pipe, family, pipeline_kwargs(request, seeds), request.clip_skip)
            output = pipe(**kwargs, callback_on_step_end=on_step_end, output_type="pil")
        end = timer.now()
        encode_seconds = timer.seconds["text_encode"] - before_encode
        timer.add("denoise", last_step[0] - start - encode_seconds)
        timer.add("vae_decode", end - last_step[0])
        return output.images

    # -- 5: saving -------------------------------------------------------------------------------
    def _finish_image(self, image, request, loaded, seed, position, batch_index, out_dir, index, save):
        image_request = dataclasses.replace(request, seed=seed)
        params = request_to_params(
            image_request, model_name=loaded.source.name, model_hash=loaded.sha256[:10], version=f"hayai {__version__}"
        )
        infotext = format_infotext(request.prompt, request.negative_prompt, params)
        if not save:
            return GeneratedImage(None, seed, position, infotext, image)
        meta = {
            "version": __version__,
            "request": request.to_dict(),  # the whole run: its seed is the run's first seed
            "image": {"index": position, "seed": seed, "batch_index": batch_index},
            "model": {
                "name": loaded.source.name,
                "sha256": loaded.sha256,
                "family": loaded.family.value,
                "path": str(loaded.source.path),
                "hub_id": loaded.source.hub_id,
            },
            "device": loaded.device,
            "dtype": loaded.dtype,
        }
        now = _dt.datetime.now()
        stem = request.filename_pattern.format(
            index=index, seed=seed, batch_index=batch_index, prompt=_slug(request.prompt), model=_slug(loaded.source.name),
            steps=request.steps, cfg=request.cfg_scale, sampler=_slug(request.sampler), width=request.width,
            height=request.height, date=now.strftime("%Y-%m-%d"), time=now.strftime("%H%M%S"),
        )
        path = unique_path(out_dir / f"{stem}.{request.image_format}")
        out_dir.mkdir(parents=True, exist_ok=True)
        save_image(image, path, infotext=infotext, hayai_meta=meta)
        return GeneratedImage(path, seed, position, infotext, image)

    # -- reproducing an image --------------------------------------------------------------------
    def request_from_image(self, image_path: Path) -> tuple[GenerationRequest, set[int] | None, list[str]]:
        """The request that made an image, and which image of that run it was.

        hayai images carry the whole run, so the same batch is re-run and only that image kept (a batch
        of 4 is not bit-identical to 4 batches of 1 on every device). For images from A1111 and other
        tools only the infotext exists: the image is re-made alone from its own seed.
        """
        meta = read_image_metadata(Path(image_path))
        warnings: list[str] = []
        if meta.hayai is not None:
            data = dict(meta.hayai["request"])
            image = meta.hayai["image"]
            batch_size = data["batch_size"]
            batch_start = image["index"] - image["batch_index"]
            data.update(seed=data["seed"] + batch_start, batch_count=1)
            model = meta.hayai["model"]
            if model.get("path") and Path(model["path"]).exists():
                data["model"] = model["path"]
            elif model.get("hub_id"):
                data["model"] = model["hub_id"]
            keep = {image["batch_index"]} if batch_size > 1 else None
            return GenerationRequest.from_dict(data), keep, warnings
        if meta.infotext is None:
            raise HayaiError(f"{image_path} carries no generation parameters (no A1111 infotext, no hayai data)")
        request, unused = request_from_infotext(parse_infotext(meta.infotext))
        if unused:
            warnings.append(f"ignored infotext keys hayai does not apply yet: {', '.join(sorted(unused))}")
        return request, None, warnings

    def reproduce(self, image_path: Path, *, progress: ProgressCallback | None = None, **overrides) -> GenerationResult:
        request, keep, warnings = self.request_from_image(image_path)
        if overrides:
            request = dataclasses.replace(request, **overrides)
        result = self.generate(request, progress=progress, _keep=keep)
        result.warnings[:0] = warnings
        return result

    # -- device helpers --------------------------------------------------------------------------
    def _torch_device(self):
        import torch

        return torch.device(self.device)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def _slug(text: str, limit: int = 60) -> str:
    """A file-name-safe short form of a prompt or name."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" if c in " ,.;:" else "" for c in text)
    return "_".join(part for part in keep.split("_") if part)[:limit] or "untitled"
