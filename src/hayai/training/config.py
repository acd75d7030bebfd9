"""`TrainConfig`: every knob of a LoRA training run, with its default and what it does, in one place.

A field left at None is decided for the run at hand by `resolve()`: from the model (resolution, target
layers, min-SNR), from the dataset's size (steps, how often to validate, sample and save), and from the
memory planner for this device (precision, gradient checkpointing, caching, optimizer, batch size).
The resolved config is what runs, what a checkpoint records and what the LoRA's metadata says.

The same fields come from a YAML file (`TrainConfig.from_yaml`), from `hayai train lora --field value`
(every field is an option, dashes for underscores), or from Python keywords; unknown fields are errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hayai.errors import RequestError
from hayai.hardware import parse_size

__all__ = [
    "CHOICES",
    "DEFAULT_STEPS_RANGE",
    "LR_SCHEDULERS",
    "MIXED_PRECISION",
    "OPTIMIZERS",
    "METHODS",
    "SAVE_FORMATS",
    "TrainConfig",
    "VIEWS_PER_IMAGE",
    "default_steps",
    "lr_factor",
]

LR_SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")
MIXED_PRECISION = ("no", "fp16", "bf16")
SAVE_FORMATS = ("kohya", "diffusers")
METHODS = ("lora", "lcm")  # what the LoRA learns: the dataset's look, or the model's own sampling in few steps
CHOICES = {"method": METHODS, "lr_scheduler": LR_SCHEDULERS, "optimizer": OPTIMIZERS, "mixed_precision": MIXED_PRECISION}
# Default length: each training image seen about 100 times (kohya users' "10 repeats x 10 epochs"),
# within these bounds; kohya's fixed default of 1600 steps is too long for 10 images, too short for 200.
VIEWS_PER_IMAGE = 100
DEFAULT_STEPS_RANGE = (100, 4000)
_NAME = re.compile(r"^[\w][\w.\- ]*$")
_FLOAT_FIELDS = ("teacher_cfg", "validation_fraction", "alpha", "dropout", "learning_rate", "text_encoder_lr", "weight_decay", "max_grad_norm",
                 "noise_offset", "min_snr_gamma", "caption_dropout", "sample_cfg")


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    # -- what to train on ------------------------------------------------------------------------
    dataset: str = _f("", "folder of images with captions (.txt beside each image, or metadata.jsonl; kohya N_name folders), "
                          "or a folder made by `hayai dataset prepare`")
    model: str | None = _f(None, "base model: a catalog name, a path, or a hub id in the local cache (as `hayai generate -m`); "
                                 "None: the default model")
    output_name: str = _f("my-lora", "the LoRA's name: its file in the LoRA catalog and the NAME in <lora:NAME:W>")
    output_dir: str | None = _f(None, "the run folder (checkpoints, samples, charts); None: $HAYAI_HOME/training/<output_name>")
    overwrite: bool = _f(False, "replace a LoRA of the same name in the catalog, and start over in a run folder that has checkpoints")
    trigger_word: str | None = _f(None, "put in front of every caption that lacks it, and used by the sample prompts")
    resolution: int | None = _f(None, "training side in pixels (buckets keep about this many pixels); None: the model's native size")
    buckets: bool = _f(True, "aspect-ratio buckets (kohya's); false: centre-crop every image to a square")
    validation_fraction: float = _f(0.1, "share of the images held out for the validation loss (at least one once there are 4)")
    # -- the network -----------------------------------------------------------------------------
    rank: int = _f(16, "LoRA rank (kohya network_dim): the size of the update; try several (a small rank can underfit, a large one overfit)")
    alpha: float | None = _f(None, "LoRA alpha (kohya network_alpha): the update is scaled by alpha / rank; None: alpha = rank")
    target_modules: tuple[str, ...] | None = _f(None, "layers to train, by name or name suffix (PEFT's rule); None: the denoiser's "
                                                      "attention projections (to_q, to_k, to_v, to_out.0, and SD3's context ones); for method lcm, the U-Net's "
                                                      "whole transformer blocks (also proj_in, proj_out, ff.net.0.proj, ff.net.2)")
    train_text_encoder: bool = _f(False, "also train the CLIP text encoders' attention (kohya's default trains them; off is safer)")
    dropout: float = _f(0.0, "LoRA dropout on each layer's input (regularisation against overfitting a small dataset)")
    # -- optimisation ----------------------------------------------------------------------------
    learning_rate: float = _f(1e-4, "peak learning rate of the denoiser's LoRA (kohya's unet_lr default)")
    text_encoder_lr: float | None = _f(None, "learning rate of the text encoders' LoRA; None: half of learning_rate")
    lr_scheduler: str = _f("cosine", "constant, linear (to 0) or cosine (to 0), after the warmup")
    warmup_steps: int | None = _f(None, "linear warmup from 0; None: 5% of the steps")
    optimizer: str | None = _f(None, "adamw or adamw8bit (bitsandbytes, CUDA only); None: adamw8bit where it runs, else adamw")
    weight_decay: float = _f(0.01, "AdamW weight decay (regularisation against overfitting a small dataset)")
    max_grad_norm: float | None = _f(1.0, "clip the gradients' norm to this; None: no clipping")
    batch_size: int | None = _f(None, "images per step and device; None: what the memory planner fits (at most 4)")
    gradient_accumulation: int = _f(1, "micro-batches summed per optimizer step (a larger batch in the same memory)")
    steps: int | None = _f(None, "optimizer steps; None: from epochs, else ~100 views of each image (100-4000 steps)")
    epochs: int | None = _f(None, "passes over the training images (kohya repeats count); give steps or epochs, not both")
    seed: int = _f(0, "seed of the split, the data order, the noise and the LoRA's initial weights")
    # -- the objective ---------------------------------------------------------------------------
    method: str = _f("lora", "lora: learn the dataset's look (`hayai train lora`); lcm: distil the model into a few-step "
                             "LCM LoRA that samples in distill_steps steps at CFG 1 (`hayai train distill`)")
    distill_steps: int = _f(4, "lcm: the sampling steps the LoRA is made for (its metadata, which sets them when it is used; "
                               "the sample grids use them, with the LCM sampler at CFG 1)")
    teacher_cfg: float | None = _f(None, "lcm: the CFG scale of the model's guided steps that the LoRA learns to take in "
                                         "one unguided step; None: the model card's CFG, else 7")
    noise_offset: float = _f(0.0, "add this much per-channel constant noise (darker darks, brighter brights; noise-prediction models)")
    min_snr_gamma: float | None = _f(None, "min-SNR loss weighting (Hang et al. 2023); None: 5 for noise-prediction models, "
                                           "off for flow matching (SD3); 0: off")
    caption_shuffle: bool = _f(False, "shuffle the comma-separated tags of each caption every time (keep_tokens stay first)")
    keep_tokens: int = _f(1, "tags kept in front when shuffling (the trigger word)")
    caption_dropout: float = _f(0.0, "probability of training an image with an empty caption (the LoRA also learns unconditioned)")
    # -- memory and speed ------------------------------------------------------------------------
    device: str | None = _f(None, "cpu, cuda or mps; None: the best one here")
    vram: str | None = _f(None, "plan for this much device memory, e.g. 8GB (on CUDA the allocator is capped to it, so "
                                "the plan is tested as on a card that size); None: the whole device")
    mixed_precision: str | None = _f(None, "no, fp16 or bf16 (base weights stored in it, LoRA in fp32); None: bf16 on GPUs that "
                                           "have it, else fp16; fp32 on the CPU")
    gradient_checkpointing: bool | None = _f(None, "recompute activations in the backward pass (less memory, ~30% slower); "
                                                    "None: only when the planner says it is needed to fit")
    cache_latents: bool | None = _f(None, "encode every image once before training, then free the VAE; None: yes")
    cache_text_embeddings: bool | None = _f(None, "encode every caption once, then free the text encoders; None: yes unless "
                                                   "captions change (shuffle) or text encoders train")
    # -- watching it -----------------------------------------------------------------------------
    validation_every: int | None = _f(None, "steps between validation losses (fixed noise and timesteps); None: 10 per run")
    checkpoint_every: int | None = _f(None, "steps between checkpoints (with a LoRA file and a sample grid each); None: 4 per run")
    keep_checkpoints: int = _f(3, "keep the last K checkpoints (the interrupted / last good one is never deleted)")
    sample_every: int | None = _f(None, "steps between sample grids; None: at every checkpoint; 0: never")
    sample_prompts: tuple[str, ...] | None = _f(None, "fixed prompts of the sample grids; None: the trigger word and two "
                                                      "validation captions")
    sample_seeds: tuple[int, ...] = _f((1, 2), "one column per seed")
    sample_steps: int = _f(20, "denoising steps of the samples")
    sample_cfg: float = _f(7.0, "CFG scale of the samples")
    # -- output ----------------------------------------------------------------------------------
    save_formats: tuple[str, ...] = _f(("kohya",), "kohya (A1111, ComfyUI, diffusers' load_lora_weights) and/or diffusers "
                                                   "(PEFT lora_A/lora_B names, pytorch_lora_weights.safetensors)")

    def __post_init__(self) -> None:
        for name in ("target_modules", "sample_prompts", "sample_seeds", "save_formats"):
            value = getattr(self, name)
            if isinstance(value, (list, str)):
                object.__setattr__(self, name, tuple([value] if isinstance(value, str) else value))
        _check(self)

    # -- building one ------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TrainConfig:
        known = cls.field_names()
        unknown = [key for key in data if key.replace("-", "_") not in known]
        if unknown:
            hints = [f"{key!r} (did you mean {difflib.get_close_matches(key.replace('-', '_'), known, 1)[0]!r}?)"
                     if difflib.get_close_matches(key.replace("-", "_"), known, 1) else repr(key) for key in unknown]
            raise RequestError(f"{where}: unknown field(s) {', '.join(hints)}; the fields are listed by `hayai train lora --help`")
        return cls(**{key.replace("-", "_"): value for key, value in data.items()})

    @classmethod
    def from_yaml(cls, path: Path) -> TrainConfig:
        import yaml

        path = Path(path).expanduser()
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise RequestError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RequestError(f"{path} is not a readable YAML file ({exc})") from None
        if not isinstance(data, dict):
            raise RequestError(f"{path}: a training config is a mapping of field: value (got {type(data).__name__})")
        for key, value in data.items():  # YAML 1.1 reads 1e-4 (no dot) as a string
            if key in _FLOAT_FIELDS and isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
                data[key] = float(value)
        config = cls.from_dict(data, where=str(path))
        if config.dataset and not Path(config.dataset).expanduser().is_absolute():  # relative to the file
            config = dataclasses.replace(config, dataset=str((path.parent / config.dataset).resolve()))
        return config

    def replace(self, **changes) -> TrainConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    # -- derived -------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        from hayai import paths

        return Path(self.output_dir).expanduser() if self.output_dir else paths.hayai_home() / "training" / self.output_name


def _check(c: TrainConfig) -> None:
    def need(condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise RequestError(f"{name}={getattr(c, name)!r} {rule}")

    def typed(name: str, kinds, optional: bool = False) -> None:
        value = getattr(c, name)
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if (value is None and optional) or (isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))):
            return
        words = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
        expected = words[float] if float in kinds else " or ".join(words[k] for k in kinds)
        raise RequestError(f"{name}={value!r} must be {'null or ' if optional else ''}{expected}")

    typed("dataset", str)
    typed("model", str, True)
    typed("output_name", str)
    typed("output_dir", str, True)
    typed("trigger_word", str, True)
    typed("method", str)
    for name in ("overwrite", "buckets", "train_text_encoder", "caption_shuffle"):
        typed(name, bool)
    for name in ("gradient_checkpointing", "cache_latents", "cache_text_embeddings"):
        typed(name, bool, True)
    for name in ("rank", "distill_steps", "gradient_accumulation", "seed", "keep_tokens", "keep_checkpoints", "sample_steps"):
        typed(name, int)
    for name in ("resolution", "warmup_steps", "batch_size", "steps", "epochs", "validation_every", "checkpoint_every",
                 "sample_every"):
        typed(name, int, True)
    for name in ("validation_fraction", "dropout", "learning_rate", "weight_decay", "noise_offset", "caption_dropout",
                 "sample_cfg"):
        typed(name, (int, float))
    for name in ("alpha", "text_encoder_lr", "max_grad_norm", "min_snr_gamma", "teacher_cfg"):
        typed(name, (int, float), True)
    need(bool(_NAME.match(c.output_name)) and "/" not in c.output_name, "output_name",
         "must be a file name (letters, digits, _ . - and spaces; no slashes)")
    need(c.method in METHODS, "method", f"must be one of {', '.join(METHODS)}")
    need(1 <= c.distill_steps <= 16, "distill_steps", "must be between 1 and 16 (LCM LoRAs sample in 2-8 steps)")
    need(c.teacher_cfg is None or 1 <= c.teacher_cfg <= 30, "teacher_cfg", "must be between 1 and 30")
    if c.method == "lcm":
        if c.train_text_encoder:
            raise RequestError("train_text_encoder=True with method='lcm': the text encoders condition the model being "
                               "distilled (the teacher) too; distillation trains the denoiser only, leave it off")
        if c.noise_offset:
            raise RequestError(f"noise_offset={c.noise_offset} with method='lcm': distillation follows the model's own "
                               "noise; leave it at 0")
    need(c.rank >= 1, "rank", "must be at least 1")
    need(c.alpha is None or c.alpha > 0, "alpha", "must be positive")
    need(0 <= c.validation_fraction < 1, "validation_fraction", "must be at least 0 and below 1")
    need(0 <= c.dropout < 1, "dropout", "must be at least 0 and below 1")
    need(c.learning_rate > 0, "learning_rate", "must be positive")
    need(c.text_encoder_lr is None or c.text_encoder_lr > 0, "text_encoder_lr", "must be positive")
    need(c.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", f"must be one of {', '.join(LR_SCHEDULERS)}")
    need(c.warmup_steps is None or c.warmup_steps >= 0, "warmup_steps", "must be at least 0")
    need(c.optimizer is None or c.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    need(c.weight_decay >= 0, "weight_decay", "must be at least 0")
    need(c.max_grad_norm is None or c.max_grad_norm > 0, "max_grad_norm", "must be positive (or null: no clipping)")
    need(c.batch_size is None or 1 <= c.batch_size <= 256, "batch_size", "must be between 1 and 256")
    need(c.gradient_accumulation >= 1, "gradient_accumulation", "must be at least 1")
    need(c.steps is None or c.steps >= 1, "steps", "must be at least 1")
    need(c.epochs is None or c.epochs >= 1, "epochs", "must be at least 1")
    if c.steps is not None and c.epochs is not None:
        raise RequestError(f"steps={c.steps} and epochs={c.epochs}: give one of them (the other follows)")
    need(0 <= c.seed < 2**32, "seed", "must be between 0 and 2**32 - 1")
    need(0 <= c.noise_offset <= 1, "noise_offset", "must be between 0 and 1 (0.05-0.1 is usual)")
    need(c.min_snr_gamma is None or c.min_snr_gamma >= 0, "min_snr_gamma", "must be at least 0 (0: off)")
    need(c.keep_tokens >= 0, "keep_tokens", "must be at least 0")
    need(0 <= c.caption_dropout < 1, "caption_dropout", "must be at least 0 and below 1")
    need(c.device is None or c.device in ("cpu", "cuda", "mps") or c.device.startswith("cuda:"), "device",
         "must be cpu, cuda, cuda:N or mps")
    if c.vram is not None:
        parse_size(c.vram)
    need(c.mixed_precision is None or c.mixed_precision in MIXED_PRECISION, "mixed_precision",
         f"must be one of {', '.join(MIXED_PRECISION)}")
    for name in ("validation_every", "checkpoint_every"):
        need(getattr(c, name) is None or getattr(c, name) >= 1, name, "must be at least 1")
    need(c.sample_every is None or c.sample_every >= 0, "sample_every", "must be at least 0 (0: no samples)")
    need(c.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
    need(c.target_modules is None or (len(c.target_modules) > 0 and all(isinstance(t, str) and t for t in c.target_modules)),
         "target_modules", "must be a list of layer names or name suffixes")
    need(c.sample_prompts is None or all(isinstance(p, str) for p in c.sample_prompts), "sample_prompts", "must be a list of prompts")
    need(len(c.sample_seeds) >= 1 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in c.sample_seeds),
         "sample_seeds", "must be a list of seeds (integers >= 0)")
    need(1 <= c.sample_steps <= 1000, "sample_steps", "must be between 1 and 1000")
    need(0 <= c.sample_cfg <= 100, "sample_cfg", "must be between 0 and 100")
    need(len(c.save_formats) >= 1 and all(f in SAVE_FORMATS for f in c.save_formats), "save_formats",
         f"must be a list of {', '.join(SAVE_FORMATS)}")
    if c.cache_text_embeddings and (c.train_text_encoder or c.caption_shuffle):
        why = "the text encoders train" if c.train_text_encoder else "shuffled captions change every time"
        raise RequestError(f"cache_text_embeddings=True cannot work when {why}; leave it unset (the planner decides) or false")


# -- pure helpers for resolve() and the loop ---------------------------------------------------------
def default_steps(train_images: int, global_batch: int) -> int:
    """~`VIEWS_PER_IMAGE` views of each training image, within `DEFAULT_STEPS_RANGE`."""
    low, high = DEFAULT_STEPS_RANGE
    return int(min(high, max(low, math.ceil(VIEWS_PER_IMAGE * train_images / global_batch))))


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """The learning rate's multiplier before optimizer step `step` (0-based): linear warmup over `warmup`
    steps, then constant, linear to 0 or cosine to 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
