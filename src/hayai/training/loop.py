"""`train_lora`: train a LoRA on a folder of images, in numbered steps:

1. the run folder: a fresh run, or the latest checkpoint when resuming (its config must agree);
2. the model: resolved like `hayai generate -m`, loaded on the CPU in float32;
3. the dataset: checked by the dataset doctor and prepared into the run folder (buckets, split);
4. the plan: precision, caching, optimizer, checkpointing and batch size for this device, then every
   default of the config decided (`session.resolve_config`);
5. the LoRA network, AdamW and the learning-rate schedule (restored from the checkpoint when resuming);
6. caches: latents and caption embeddings, after which the VAE and text encoders leave the device;
7. the loop: a step is `gradient_accumulation` micro-batches; every N steps a validation loss with fixed
   noise and timesteps, a checkpoint (with the LoRA file) and a sample grid, and the loss chart. A
   non-finite loss stops the run before it reaches the weights (`TrainingDiverged`, naming the last good
   checkpoint); Ctrl-C (or `should_stop()`) saves a checkpoint at the next step boundary and returns;
8. the LoRA in kohya format (and diffusers', on request), copied into the LoRA catalog; the run logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from hayai.dataset import load_manifest
from hayai.dataset.prepare import MANIFEST
from hayai.errors import RequestError
from hayai.models.components import denoiser_of
from hayai.store.recording import recorded_run
from hayai.hardware import cap_memory, parse_size
from hayai.models.families import Family
from hayai.training import checkpoint as ckpt
from hayai.training.config import TrainConfig
from hayai.training.export import save_diffusers
from hayai.training.lora_layers import DISTILL_TARGETS, LoraNetwork
from hayai.training.objective import Objective
from hayai.training.run import Run, TrainingDiverged
from hayai.training.session import (
    SUPPORTED_FAMILIES,
    Processes,
    Session,
    bucket_step,
    build_optimizer,
    build_schedule,
    cache_latents,
    cache_text,
    dataset_for,
    device_spec,
    make_plan,
    resolve_config,
    train_examples,
)

__all__ = ["TrainEvent", "TrainResult", "TrainingDiverged", "train_lora"]

# what a resumed run may change: how it is watched and saved, where it runs, and how long it runs
_RESUME_FREE = {"steps", "epochs", "validation_every", "checkpoint_every", "keep_checkpoints", "sample_every", "sample_prompts",
                "sample_seeds", "sample_steps", "sample_cfg", "save_formats", "overwrite", "output_dir", "device", "vram", "dataset"}


@dataclass(frozen=True)
class TrainEvent:
    phase: str  # "prepare", "cache", "validate", "train", "checkpoint", "sample", "save"
    step: int
    total: int
    loss: float | None = None
    lr: float | None = None
    val_loss: float | None = None
    message: str = ""


@dataclass
class TrainResult:
    run_id: int | None
    status: str  # "ok" or "interrupted" (a checkpoint was saved; continue with resume=True)
    run_dir: Path
    step: int
    total_steps: int
    lora_path: Path | None  # the LoRA in the catalog (None unless the run finished)
    files: dict[str, str]  # "kohya", "diffusers", "chart", "checkpoint", "samples"
    losses: list[tuple[int, float]]
    validation: list[tuple[int, float]]
    config: dict  # resolved
    plan: dict
    findings: list[dict]  # the dataset doctor's
    timings: dict[str, float]
    peak_memory_bytes: int | None
    process: int = 0  # this process's rank under `accelerate launch` (only process 0 writes files and logs)

    @property
    def warnings(self) -> list[str]:
        return [f["message"] for f in self.findings if f["level"] == "warning"]

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id, "status": self.status, "run_dir": str(self.run_dir), "step": self.step,
            "total_steps": self.total_steps, "lora_path": str(self.lora_path) if self.lora_path else None,
            "files": self.files, "losses": self.losses, "validation": self.validation, "config": self.config,
            "plan": self.plan, "findings": self.findings, "warnings": self.warnings, "timings": self.timings,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 6)


class _StopFlag:
    """Ctrl-C asks the loop to stop at the next step boundary; a second Ctrl-C interrupts at once."""

    def __init__(self, should_stop: Callable[[], bool] | None) -> None:
        self.requested = False
        self.should_stop = should_stop
        self._previous = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.requested or bool(self.should_stop and self.should_stop())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- 1. the run folder ---------------------------------------------------------------------------------
def _start_or_resume(config: TrainConfig, resume: bool) -> tuple[TrainConfig, dict | None, Path | None]:
    run_dir = config.run_dir
    found = ckpt.latest_checkpoint(run_dir)
    if not resume:
        if found is not None and not config.overwrite:
            raise RequestError(f"{run_dir} already has checkpoints (the latest: {found.name}); continue it with --resume, "
                               "or start over with --overwrite (its checkpoints are deleted)")
        return config, None, None
    if found is None:
        raise RequestError(f"nothing to resume: {run_dir} has no checkpoint")
    state = ckpt.load_state(found)
    saved = TrainConfig.from_dict(state["config"]).to_dict()
    defaults = TrainConfig().to_dict()
    given = {k: v for k, v in config.to_dict().items() if v is not None and v != defaults[k]}
    different = [k for k, v in given.items() if k not in _RESUME_FREE and v != saved[k]]
    if different:
        raise RequestError("the checkpoint was trained with other settings: " + ", ".join(
            f"{k}={saved[k]!r} (given {given[k]!r})" for k in different) + "; resume with the same ones")
    changes = {k: v for k, v in given.items() if k in _RESUME_FREE and k != "dataset"}
    if "steps" in changes or "epochs" in changes:
        changes = {"steps": None, "epochs": None, **changes}
    return TrainConfig.from_dict({**saved, **changes}), state, found


def _objective(config: TrainConfig, family: Family, pipe, network: LoraNetwork):
    """What the LoRA learns: the dataset (the family's denoising loss), or the model's own steps (distillation)."""
    if config.method == "lcm":
        from hayai.training.consistency import ConsistencyObjective

        return ConsistencyObjective(family, dict(pipe.scheduler.config), network, teacher_cfg=config.teacher_cfg)
    return Objective(family, dict(pipe.scheduler.config), noise_offset=config.noise_offset,
                     min_snr_gamma=config.min_snr_gamma)


def _prepare_model(pipe, config: TrainConfig, family: Family, device: torch.device, weight_dtype) -> LoraNetwork:
    """Freeze the pipeline, place it, attach a fresh LoRA network (its initial weights drawn from the seed)."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    denoiser = denoiser_of(pipe)
    denoiser.to(weight_dtype)  # on the device after the caches are made (which do not need it)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        encoder = getattr(pipe, name, None)
        if encoder is not None:
            encoder.to(device, weight_dtype)  # as the pipeline runs them (SD3's T5 in float32 would be 19 GB)
    pipe.vae.to(device)
    if config.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for name in ("text_encoder", "text_encoder_2"):
                encoder = getattr(pipe, name, None)
                if encoder is not None:
                    # reentrant checkpointing (transformers < 5's default) passes no gradient to the LoRA
                    # when the layer's input (frozen embeddings) does not require one
                    encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                    encoder.train()  # transformers checkpoints only in training mode (CLIP has no dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = LoraNetwork.for_pipeline(pipe, family, rank=config.rank, alpha=config.alpha, dropout=config.dropout,
                                           target_modules=config.target_modules, text_encoders=config.train_text_encoder)
    network.to(device)
    network.attach(pipe)
    network.train(True)
    return network


# -- train_lora ------------------------------------------------------------------------------------------
def train_lora(config: TrainConfig, *, resume: bool = False, progress: Callable[[TrainEvent], None] | None = None,
               should_stop: Callable[[], bool] | None = None, store=None) -> TrainResult:
    """Train a LoRA as `config` says (see the module docstring); `resume` continues the run's latest checkpoint.

    `progress(event)` is called as the run goes (in the main process); a KeyboardInterrupt raised in it stops
    the run as Ctrl-C does. Returns the result: status "interrupted" after a stop, with the checkpoint.
    """
    from hayai.generation.timing import PeakMemory
    from hayai.lora.catalog import loras_dir
    from hayai.models.catalog import Catalog, source_hash
    from hayai.models.card import recommended_settings
    from hayai.models.loading import load_pipeline
    from hayai.store import Store

    timer = _Timer()
    # 1. the run folder
    config, saved_state, resumed_from = _start_or_resume(config, resume)
    run_dir = config.run_dir
    catalog_file = loras_dir() / f"{config.output_name}.safetensors"
    if not resume and catalog_file.exists() and not config.overwrite:
        raise RequestError(f"a LoRA named {config.output_name!r} is already in the catalog ({catalog_file}); choose another "
                           "output_name or pass --overwrite")
    processes = Processes(cpu=(config.device or "").startswith("cpu") or not torch.cuda.is_available()
                          or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"))
    emit = progress if (progress is not None and processes.main) else (lambda event: None)
    own_store = store is None
    store = store if store is not None else Store()
    # 2. the model
    with timer.phase("load"):
        emit(TrainEvent("prepare", 0, 0, message="loading the model"))
        source = Catalog(store).resolve(config.model)
        if source.family not in SUPPORTED_FAMILIES:
            raise RequestError(f"model {source.name!r} is a {source.family.value} model; LoRA training supports "
                               f"{', '.join(f.value for f in SUPPORTED_FAMILIES)}")
        pipe = load_pipeline(source, torch_dtype=torch.float32)
        model_hash = source_hash(store, source)
    family = source.family
    native = pipe.vae_scale_factor * denoiser_of(pipe).config.sample_size
    step_px = bucket_step(pipe)
    prepared = load_manifest(Path(config.dataset).expanduser()) if (Path(config.dataset).expanduser() / MANIFEST).is_file() else None
    if prepared is not None:  # a folder made by `hayai dataset prepare`: its images are already cut
        if config.resolution not in (None, prepared.resolution):
            raise RequestError(f"resolution={config.resolution}: the prepared dataset {config.dataset} was made at "
                               f"{prepared.resolution}; prepare it again or leave resolution unset")
        if prepared.bucket_step % step_px:
            raise RequestError(f"the prepared dataset {config.dataset} has buckets in steps of {prepared.bucket_step} px; "
                               f"this model needs multiples of {step_px}: prepare it again with --step {step_px}")
    resolution = config.resolution or (prepared.resolution if prepared is not None else native)
    if resolution % step_px:
        raise RequestError(f"resolution={resolution} must be a multiple of {step_px} for this model")
    config = dataclasses.replace(config, resolution=resolution)
    # 3. the dataset
    with timer.phase("prepare"):
        emit(TrainEvent("prepare", 0, 0, message="checking and preparing the dataset"))
        if not resume and config.overwrite and processes.main:
            shutil.rmtree(run_dir / ckpt.CHECKPOINTS, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest, report = dataset_for(config, run_dir, resolution=resolution, step=step_px, processes=processes)
        train, validation = train_examples(manifest)
        if not train:
            raise RequestError(f"dataset {config.dataset}: no training images (all {len(validation)} were held out); "
                               "lower validation_fraction")
    findings = [f.to_dict() for f in report.findings] if report is not None else list(manifest.findings)
    for finding in findings:
        if finding["level"] != "info":
            emit(TrainEvent("prepare", 0, 0, message=f"{finding['level']}: {finding['message']}"))
    # 4. the plan and the resolved config
    device_info = cap_memory(device_spec(config.device, processes), parse_size(config.vram) if config.vram else None)
    lora_params = LoraNetwork.for_pipeline(pipe, family, rank=config.rank, alpha=config.alpha or config.rank,
                                           target_modules=config.target_modules or (DISTILL_TARGETS if config.method == "lcm" else None),
                                           text_encoders=config.train_text_encoder).num_parameters()
    plan = make_plan(config, pipe, family, device_info, resolution=resolution, train_images=len(train), lora_params=lora_params)
    config = resolve_config(config, family=family, native_size=native, plan=plan, train=train, validation=validation,
                            world=processes.world, card=recommended_settings(source))
    emit(TrainEvent("prepare", 0, 0, message="plan: " + "; ".join(plan.reasons)))
    # 5. the network, the optimizer, the schedule
    device, weight_dtype = torch.device(plan.device), getattr(torch, plan.weight_dtype)
    network = _prepare_model(pipe, config, family, device, weight_dtype)
    optimizer = build_optimizer(config, network)
    session = Session(config, family, pipe, network, optimizer, build_schedule(config, optimizer),
                      torch.amp.GradScaler(device.type) if config.mixed_precision == "fp16" else None, device, weight_dtype,
                      manifest, train, validation, plan, processes, findings=findings)
    objective = _objective(config, family, pipe, network)
    run = Run(session, objective, torch.Generator().manual_seed(config.seed), store=store, run_dir=run_dir, source=source,
               model_hash=model_hash, started=_now(), session_id=uuid.uuid4().hex[:16], timer=timer)
    if saved_state is not None:
        run.restore(saved_state, resumed_from)
    # 6. caches
    with timer.phase("cache"):
        emit(TrainEvent("cache", run.step, config.steps, message="encoding images and captions"))
        session.validation_latents = cache_latents(pipe.vae, validation, config.seed, device, plan.cache_chunk)
        if config.cache_latents:
            session.latents = cache_latents(pipe.vae, train, config.seed, device, plan.cache_chunk)
        empty = config.caption_dropout > 0 or getattr(objective, "guided", False)  # the unconditional embedding
        captions = [e.caption for e in train] + ([""] if empty else []) if config.cache_text_embeddings else []
        if not config.train_text_encoder:  # validation captions never change: cached whenever the encoders are frozen
            captions += [e.caption for e in validation]
        session.text = cache_text(pipe, family, captions, device) if captions else {}
        session.offload_idle()
        session.denoiser.to(device)

    recording = (recorded_run(store, "train_lora", request=config.to_dict(), model=source.name, model_hash=model_hash,
                              device=str(device)) if processes.main else contextlib.nullcontext())
    try:
        with recording as record:
            if record is not None:
                run.run_id = record.run_id
                store.start_training(run.run_id, name=config.output_name, run_dir=str(run_dir), dataset=str(config.dataset),
                                     family=family.value, total_steps=config.steps,
                                     resumed_from=run.step if resumed_from else None, config=config.to_dict())
            memory = PeakMemory(device)
            memory.reset()
            status, events, lora_path = "error", [], None
            # LoRA dropout draws from torch's global generators: seeded for the run, the caller's state put back after
            rng_devices = [device.index or 0] if device.type == "cuda" else []
            try:
                # 7. the loop
                with _StopFlag(should_stop) as stop, torch.random.fork_rng(devices=rng_devices):
                    torch.manual_seed(config.seed + 1)
                    if saved_state is not None:
                        ckpt.restore_rng(saved_state["rng"], run.generator)

                    def notify(event: TrainEvent) -> None:
                        try:
                            emit(event)
                        except KeyboardInterrupt:
                            stop.requested = True

                    rng = ckpt.rng_state(run.generator)  # the random state at the boundary of the last completed step
                    if run.step == 0 and validation and processes.main:
                        with timer.phase("validate"):
                            run.val_losses.append((0, run.validation_loss()))
                        notify(TrainEvent("validate", 0, config.steps, val_loss=run.val_losses[-1][1]))
                    while run.step < config.steps and not _agreed(stop(), processes):
                        with timer.phase("train"):
                            loss, lr = run.optimizer_step()
                        rng = ckpt.rng_state(run.generator)
                        run.losses.append((run.step, loss))
                        run.lrs.append((run.step, lr))
                        if not processes.main:
                            continue
                        last, val = run.step == config.steps, None
                        if validation and (run.step % config.validation_every == 0 or last):
                            with timer.phase("validate"):
                                val = run.validation_loss()
                            run.val_losses.append((run.step, val))
                        if run.step % config.checkpoint_every == 0 or last:
                            run.checkpoint(rng)
                            notify(TrainEvent("checkpoint", run.step, config.steps, message=str(run.last_checkpoint)))
                        if config.sample_every and (run.step % config.sample_every == 0 or last):
                            with timer.phase("samples"):
                                run.files["samples"] = str(run.samples())
                            notify(TrainEvent("sample", run.step, config.steps, message=run.files["samples"]))
                        if val is not None or run.step % config.checkpoint_every == 0 or last:
                            run.chart()
                            run.log()
                        notify(TrainEvent("train", run.step, config.steps, loss=loss, lr=lr, val_loss=val))
                    interrupted = run.step < config.steps
                    if interrupted and processes.main:
                        events.append({"event": "interrupted", "step": run.step})
                        run.checkpoint(rng)
                        run.chart()
                        run.log()
                # 8. the files
                if not interrupted and processes.main:
                    with timer.phase("save"):
                        emit(TrainEvent("save", run.step, config.steps, message="writing the LoRA"))
                        final = run.write_lora(run_dir, _now())
                        run.files["kohya"] = str(final)
                        if "diffusers" in config.save_formats:
                            run.files["diffusers"] = str(save_diffusers(run_dir / "diffusers", network))
                        catalog_file.parent.mkdir(parents=True, exist_ok=True)
                        partial = catalog_file.with_name(catalog_file.name + ".partial")
                        shutil.copyfile(final, partial)
                        partial.replace(catalog_file)
                        lora_path = catalog_file
                        store.update_training(run.run_id, last_step=run.step, lora_path=str(catalog_file))
                processes.barrier()
                status = "interrupted" if interrupted else "ok"
                if record is not None:
                    record.status = status
            except KeyboardInterrupt:
                status = "interrupted"
                if record is not None:
                    record.error = "interrupted during a step; the last checkpoint is kept"
                raise
            finally:
                network.detach()
                reading = memory.read()
                if record is not None:
                    record.outputs = ([run.files[k] for k in ("kohya", "diffusers") if k in run.files]
                                      + ([str(lora_path)] if lora_path else []))
                    record.seeds, record.timings, record.peak_memory_bytes = [config.seed], timer.seconds, reading.peak_bytes
                    record.events = [{"plan": list(plan.reasons)}, *events]
    finally:
        if own_store:
            store.close()
    return TrainResult(run.run_id, status, run_dir, run.step, config.steps, lora_path, run.files, run.losses,
                       run.val_losses, config.to_dict(), plan.to_dict(), findings, dict(timer.seconds), reading.peak_bytes,
                       processes.rank)


def _agreed(stop: bool, processes: Processes) -> bool:
    """Whether any process wants to stop (all of them stop at the same step)."""
    if processes.world == 1:
        return stop
    return bool(processes.sum_(torch.tensor([float(stop)])).item() > 0)
