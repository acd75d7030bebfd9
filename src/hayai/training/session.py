"""Everything a training run is made of, built before the first step: the processes, the model, the
dataset, the memory plan, the resolved config, the LoRA network, the optimizer and its schedule, and
the cached latents and text embeddings.

`Processes` is the one place that knows about several processes: under `accelerate launch` (one process
per GPU, or `--cpu --num_processes N`) every process runs the same loop on its share of each global
batch and the LoRA's gradients are summed across processes before each step; alone, it is a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hayai.dataset import check_dataset, load_manifest, prepare_dataset, scan_dataset
from hayai.dataset.prepare import MANIFEST, Manifest
from hayai.errors import RequestError
from hayai.hardware import DeviceSpec, probe
from hayai.memory.facts import facts_from_pipeline
from hayai.memory.training import TrainingPlan, TrainingRequest, plan_training
from hayai.models.components import denoiser_of
from hayai.models.families import Family
from hayai.training.config import TrainConfig, default_steps
from hayai.training.data import Example, batches_per_epoch, encode_captions, examples_from, load_pixels
from hayai.training.lora_layers import LoraNetwork

__all__ = ["SUPPORTED_FAMILIES", "Processes", "Session", "bucket_step", "cache_latents", "cache_text", "encode_latents",
           "resolve_config"]

SUPPORTED_FAMILIES = (Family.SD1, Family.SD2, Family.SDXL, Family.SD3)


# -- processes ---------------------------------------------------------------------------------------
class Processes:
    """This process's place among the training processes (accelerate's PartialState when launched)."""

    def __init__(self, cpu: bool) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.local_rank = 0
        self._state = None
        if self.world > 1:
            from accelerate import PartialState

            self._state = PartialState(cpu=cpu)
            self.rank, self.local_rank, self.world = (self._state.process_index, self._state.local_process_index,
                                                      self._state.num_processes)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the processes, in place (through the backend's device: NCCL wants CUDA tensors)."""
        if self.world == 1:
            return tensor
        device = self._state.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        moved = tensor.to(device)
        torch.distributed.all_reduce(moved, op=torch.distributed.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
        return tensor


# -- the model and the device ------------------------------------------------------------------------
def device_spec(name: str | None, processes: Processes) -> DeviceSpec:
    machine = probe()
    if name is None and processes.world > 1 and torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU") != "true":
        name = f"cuda:{processes.local_rank}"
    if name is None:
        return machine.best
    for spec in machine.devices:
        if name in (spec.kind, spec.torch_device):
            return spec
    found = ", ".join(spec.torch_device for spec in machine.devices)
    raise RequestError(f"device={name!r} is not available here; found: {found}")


def bucket_step(pipe) -> int:
    """Image sides must be multiples of this: the VAE's factor x the denoiser's downsampling (x patch size)."""
    denoiser = denoiser_of(pipe)
    factor = pipe.vae_scale_factor
    if hasattr(denoiser.config, "patch_size") and denoiser.config.patch_size:
        return factor * int(denoiser.config.patch_size)
    return factor * 2 ** (len(denoiser.config.block_out_channels) - 1)


# -- the dataset -------------------------------------------------------------------------------------
def dataset_for(config: TrainConfig, run_dir: Path, *, resolution: int, step: int, processes: Processes):
    """(manifest, report): a prepared dataset as given, or the source folder prepared into the run folder."""
    source = Path(config.dataset).expanduser()
    if not config.dataset:
        raise RequestError("dataset='' : give the folder of training images (dataset: in the YAML, --dataset on the command line)")
    if (source / MANIFEST).is_file():
        manifest = load_manifest(source)
        return manifest, None
    scan = scan_dataset(source)
    report = check_dataset(scan, resolution=resolution, trigger_word=config.trigger_word)
    if report.errors:
        raise RequestError(f"dataset {source}: " + "; ".join(f.message for f in report.errors))
    target = run_dir / "dataset"
    if processes.main:
        prepare_dataset(scan, target, resolution=resolution, bucket_step=step, buckets=config.buckets,
                        validation_fraction=config.validation_fraction, seed=config.seed, trigger_word=config.trigger_word)
    processes.barrier()
    return load_manifest(target), report


# -- the resolved config -----------------------------------------------------------------------------
def resolve_config(config: TrainConfig, *, family: Family, native_size: int, plan: TrainingPlan, train: list[Example],
                   validation: list[Example], world: int, card: dict | None = None) -> TrainConfig:
    """`config` with every None decided: from the model (and its card's settings, `card`), the dataset's size
    and the memory plan (pure)."""
    from hayai.training.lora_layers import DISTILL_TARGETS, default_targets

    flow = family is Family.SD3
    distill = config.method == "lcm"
    if distill and flow:
        raise RequestError(f"method='lcm' distils noise-prediction models (SD1, SD2, SDXL); {family.value} is a "
                           "flow-matching model: use its distilled releases (SD3.5 Large Turbo, Hyper-SD3) instead")
    if distill and config.min_snr_gamma:
        raise RequestError(f"min_snr_gamma={config.min_snr_gamma} with method='lcm': the consistency loss weighs every "
                           "example alike; leave it unset")
    if flow and config.noise_offset:
        raise RequestError(f"noise_offset={config.noise_offset} applies to noise-prediction models, not {family.value} (flow matching)")
    if flow and config.min_snr_gamma:
        raise RequestError(f"min_snr_gamma={config.min_snr_gamma} applies to noise-prediction models, not {family.value}")
    batch = config.batch_size or plan.batch_size
    per_epoch = batches_per_epoch(train, batch * world)
    steps_per_epoch = max(1, math.ceil(per_epoch / config.gradient_accumulation))
    if config.steps is not None:
        steps = config.steps
    elif config.epochs is not None:
        steps = config.epochs * steps_per_epoch
    else:
        steps = default_steps(len(train), batch * world * config.gradient_accumulation)
    checkpoint_every = config.checkpoint_every or max(1, math.ceil(steps / 4))
    prompts = config.sample_prompts
    if prompts is None:
        captions = [e.caption for e in (validation or train)][:2]
        prompts = tuple(dict.fromkeys(([config.trigger_word] if config.trigger_word else []) + captions)) or ("",)
    return dataclasses.replace(
        config,
        resolution=config.resolution or native_size,
        alpha=float(config.alpha if config.alpha is not None else config.rank),
        target_modules=tuple(config.target_modules or (DISTILL_TARGETS if distill else default_targets(family))),
        text_encoder_lr=config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate / 2,
        warmup_steps=config.warmup_steps if config.warmup_steps is not None else int(0.05 * steps),
        optimizer=plan.optimizer,
        batch_size=batch,
        steps=steps,
        epochs=None,  # a resolved run counts steps (its epochs follow: steps x accumulation / batches per epoch)
        min_snr_gamma=None if flow or distill else (5.0 if config.min_snr_gamma is None else float(config.min_snr_gamma) or None),
        teacher_cfg=(float(config.teacher_cfg if config.teacher_cfg is not None else (card or {}).get("cfg_scale", 7.0))
                     if distill else None),
        device=plan.device,
        mixed_precision=plan.mixed_precision,
        gradient_checkpointing=plan.gradient_checkpointing,
        cache_latents=plan.cache_latents,
        cache_text_embeddings=plan.cache_text_embeddings,
        validation_every=config.validation_every or max(1, math.ceil(steps / 10)),
        checkpoint_every=checkpoint_every,
        sample_every=checkpoint_every if config.sample_every is None else config.sample_every,
        sample_prompts=tuple(prompts),
    )


def make_plan(config: TrainConfig, pipe, family: Family, device: DeviceSpec, *, resolution: int, train_images: int,
              lora_params: int) -> TrainingPlan:
    import importlib.util

    request = TrainingRequest(
        resolution, resolution, lora_params, train_images, config.train_text_encoder, config.caption_shuffle,
        config.batch_size, config.mixed_precision, config.gradient_checkpointing, config.cache_latents,
        config.cache_text_embeddings, config.optimizer,
    )
    if config.optimizer == "adamw8bit" and (device.kind != "cuda" or importlib.util.find_spec("bitsandbytes") is None):
        raise RequestError("optimizer='adamw8bit' needs bitsandbytes (pip install bitsandbytes) and a CUDA device")
    if config.mixed_precision == "bf16" and device.accelerator and not device.bf16:
        raise RequestError(f"mixed_precision='bf16': {device.name} has no bfloat16; use fp16")
    return plan_training(facts_from_pipeline(pipe, family), request, device,
                         bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None)


# -- caches ------------------------------------------------------------------------------------------
def _scale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def encode_latents(vae, examples: list[Example], seed: int, device, batch: int = 8) -> list[torch.Tensor]:
    """Each example's latents [C, h, w] (float32), sampled with a generator of its own (seeded by its index).

    Examples are encoded `batch` at a time when they share a size (one VAE call), each still drawing its
    sample from its own generator, so an example's latents do not depend on what else is in the batch.
    """
    out: list[torch.Tensor] = []
    with torch.no_grad():
        start = 0
        while start < len(examples):
            size = (examples[start].width, examples[start].height)
            chunk = [examples[start]]
            while len(chunk) < batch and start + len(chunk) < len(examples) and \
                    (examples[start + len(chunk)].width, examples[start + len(chunk)].height) == size:
                chunk.append(examples[start + len(chunk)])
            pixels = torch.stack([load_pixels(e) for e in chunk]).to(device, vae.dtype)
            encoded = vae.encode(pixels)
            distribution = getattr(encoded, "latent_dist", None)
            if distribution is not None:
                latents = distribution.sample([torch.Generator().manual_seed(seed * 100_003 + e.index) for e in chunk])
            else:  # AutoencoderTiny and other deterministic encoders
                latents = encoded.latents
            out.extend(_scale_latents(vae, latents.float()))
            start += len(chunk)
    return out


def cache_latents(vae, examples: list[Example], seed: int, device, batch: int = 8) -> dict[int, torch.Tensor]:
    return dict(zip((e.index for e in examples), encode_latents(vae, examples, seed, device, batch)))


def cache_text(pipe, family: Family, captions: list[str], device, batch: int = 16) -> dict[str, dict]:
    """caption -> {"embeds": [L, D], "pooled": [P] or None}."""
    unique = list(dict.fromkeys(captions))
    out: dict[str, dict] = {}
    with torch.no_grad():
        for first in range(0, len(unique), batch):
            chunk = unique[first : first + batch]
            cond = encode_captions(pipe, family, chunk, device)
            for i, caption in enumerate(chunk):
                out[caption] = {"embeds": cond["embeds"][i].float(),
                                "pooled": None if cond["pooled"] is None else cond["pooled"][i].float()}
    return out


# -- the session -------------------------------------------------------------------------------------
@dataclass
class Session:
    config: TrainConfig  # resolved
    family: Family
    pipe: object
    network: LoraNetwork
    optimizer: object
    schedule: object
    scaler: object | None
    device: torch.device
    weight_dtype: torch.dtype
    manifest: Manifest
    train: list[Example]
    validation: list[Example]
    plan: TrainingPlan
    processes: Processes
    latents: dict[int, torch.Tensor] = field(default_factory=dict)  # train examples
    validation_latents: dict[int, torch.Tensor] = field(default_factory=dict)
    text: dict[str, dict] = field(default_factory=dict)
    findings: list[dict] = field(default_factory=list)
    offloaded: tuple[str, ...] = ()  # frozen components moved back to the CPU once caching made them idle

    @property
    def denoiser(self):
        return denoiser_of(self.pipe)

    def autocast(self):
        if self.config.mixed_precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.weight_dtype)

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.vae.config.latent_channels)

    @property
    def latent_factor(self) -> int:
        return int(self.pipe.vae_scale_factor)

    def offload_idle(self) -> None:
        """On an accelerator, send what the caches made idle (VAE, text encoders) back to the CPU."""
        if self.device.type == "cpu":
            return
        idle = ["vae"] if self.config.cache_latents else []
        if self.config.cache_text_embeddings and not self.config.train_text_encoder:
            idle += [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(self.pipe, n, None) is not None]
        for name in idle:
            getattr(self.pipe, name).to("cpu")
        self.offloaded = tuple(idle)

    @contextlib.contextmanager
    def whole_pipeline(self):
        """The offloaded components back on the device for a while (sample images)."""
        for name in self.offloaded:
            getattr(self.pipe, name).to(self.device)
        try:
            yield self.pipe
        finally:
            for name in self.offloaded:
                getattr(self.pipe, name).to("cpu")


def build_optimizer(config: TrainConfig, network: LoraNetwork):
    denoiser_params = network.parameters(tuple(c for c in network.components() if not c.startswith("text_encoder")))
    text_params = network.parameters(tuple(c for c in network.components() if c.startswith("text_encoder")))
    groups = [{"params": denoiser_params, "lr": config.learning_rate}]
    if text_params:
        groups.append({"params": text_params, "lr": config.text_encoder_lr})
    if config.optimizer == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def build_schedule(config: TrainConfig, optimizer):
    from functools import partial

    from hayai.training.config import lr_factor

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, total=config.steps, warmup=config.warmup_steps, kind=config.lr_scheduler))


def train_examples(manifest: Manifest) -> tuple[list[Example], list[Example]]:
    return examples_from(manifest, "train"), examples_from(manifest, "validation")
