"""One training run's state and its parts: the optimizer step, the validation loss, sample grids, the loss
chart, the history in the store, checkpoints and the LoRA files. `loop.train_lora` drives it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from hayai.errors import HayaiError
from hayai.models.families import Family
from hayai.training import checkpoint as ckpt
from hayai.training.data import batches_per_epoch, encode_captions, epoch_plan, shape_caption, time_ids
from hayai.speed.few_step import METADATA_KEY as FEW_STEP_KEY
from hayai.training.export import save_kohya, ss_metadata
from hayai.training.objective import Draw, Objective, predict
from hayai.training.session import Processes, Session, encode_latents

__all__ = ["Run", "TrainingDiverged", "few_step_settings", "sum_gradients"]


class TrainingDiverged(HayaiError):
    """The loss became NaN or infinite; the weights were not updated with it."""


class Run:
    """The state of the loop: the session, where it is, what it has logged, and its checkpoints."""

    def __init__(self, session: Session, objective: Objective, generator: torch.Generator, *, store, run_dir: Path,
                 source, model_hash: str, started: str, session_id: str, timer) -> None:
        self.s, self.objective, self.generator = session, objective, generator
        self.store, self.run_dir, self.source, self.model_hash = store, run_dir, source, model_hash
        self.started, self.session_id, self.timer = started, session_id, timer  # timer: loop._Timer
        self.step = self.micro = 0
        self.losses: list[tuple[int, float]] = []
        self.val_losses: list[tuple[int, float]] = []
        self.lrs: list[tuple[int, float]] = []
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step = -1
        self.files: dict[str, str] = {}
        self.run_id: int | None = None
        self._logged = {"loss": 0, "val_loss": 0, "lr": 0}
        config = session.config
        self.global_batch = config.batch_size * session.processes.world
        self.per_epoch = batches_per_epoch(session.train, self.global_batch)
        self._plan: tuple[int, list[list[int]]] | None = None

    # -- state -------------------------------------------------------------------------------------------
    def restore(self, state: dict, folder: Path) -> None:
        s = self.s
        s.network.load_state_dict(state["network"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.schedule.load_state_dict(state["schedule"])
        if s.scaler is not None and state.get("scaler"):
            s.scaler.load_state_dict(state["scaler"])
        self.step, self.micro = state["step"], state["micro"]
        self.losses, self.val_losses, self.lrs = ([tuple(x) for x in state["history"][k]] for k in ("loss", "val_loss", "lr"))
        self._logged = {"loss": len(self.losses), "val_loss": len(self.val_losses), "lr": len(self.lrs)}
        self.session_id, self.started = state["session_id"], state["started_at"]
        self.last_checkpoint, self.last_checkpoint_step = folder, self.step

    def state(self, rng: dict) -> dict:
        s = self.s
        return {
            "step": self.step, "micro": self.micro, "network": s.network.state_dict(), "optimizer": s.optimizer.state_dict(),
            "schedule": s.schedule.state_dict(), "scaler": s.scaler.state_dict() if s.scaler is not None else None,
            "rng": rng, "history": {"loss": self.losses, "val_loss": self.val_losses, "lr": self.lrs},
            "config": s.config.to_dict(), "session_id": self.session_id, "started_at": self.started,
        }

    # -- the step ----------------------------------------------------------------------------------------
    def _batch_ids(self) -> list[int]:
        epoch, position = divmod(self.micro, self.per_epoch)
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, epoch_plan(self.s.train, self.global_batch, self.s.config.seed, epoch))
        return self._plan[1][position]

    def _cond(self, captions: list[str]) -> dict:
        s = self.s
        if s.config.cache_text_embeddings or all(c in s.text for c in captions):
            parts = [s.text[c] for c in captions]
            cond = {"embeds": torch.stack([p["embeds"] for p in parts]),
                    "pooled": None if parts[0]["pooled"] is None else torch.stack([p["pooled"] for p in parts])}
        else:
            cond = encode_captions(s.pipe, s.family, captions, s.device)
        return {k: (v.to(s.device, s.weight_dtype) if v is not None else None) for k, v in cond.items()}

    def _predictor(self, examples):
        """The denoiser with the LoRA for these examples (SDXL's size ids are theirs): objective.Predict."""
        s = self.s
        ids = None
        if s.family is Family.SDXL:
            ids = torch.tensor([time_ids(e) for e in examples], device=s.device, dtype=s.weight_dtype)

        def run(noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict) -> torch.Tensor:
            with s.autocast():
                return predict(s.denoiser, s.family, noisy.to(s.weight_dtype), timesteps.to(s.device), cond, ids)

        return run

    def _uncond(self, count: int) -> dict | None:
        """The empty caption's conditioning, for an objective that guides (distillation's teacher), else None."""
        return self._cond([""] * count) if getattr(self.objective, "guided", False) else None

    def micro_loss(self, ids: list[int]) -> torch.Tensor:
        """This process's share of a global micro-batch: the sum of its (weighted) per-example losses.

        Every process draws the captions and noise of the whole global batch from the same generator, so
        the generators stay equal and an example's noise does not depend on which process trains it.
        """
        s, config = self.s, self.s.config
        examples = [s.train[i] for i in ids]
        captions = [shape_caption(e.caption, self.generator, shuffle=config.caption_shuffle,
                                  keep_tokens=config.keep_tokens, dropout=config.caption_dropout) for e in examples]
        shape = (len(ids), s.latent_channels, examples[0].height // s.latent_factor, examples[0].width // s.latent_factor)
        draw = self.objective.draw(shape, self.generator)
        share = [k for k in range(len(ids)) if k % s.processes.world == s.processes.rank]
        if not share:
            return torch.zeros((), device=s.device)
        mine = [examples[k] for k in share]
        if config.cache_latents:
            latents = torch.stack([s.latents[e.index] for e in mine]).to(s.device)
        else:
            latents = torch.stack(encode_latents(s.pipe.vae, mine, config.seed, s.device))
        draw = Draw(draw.noise[share], draw.index[share])
        cond = self._cond([captions[k] for k in share])
        return self.objective.example_losses(latents, draw, self._predictor(mine), cond, self._uncond(len(mine))).sum()

    def optimizer_step(self) -> tuple[float, float]:
        """One optimizer step over `gradient_accumulation` micro-batches: (loss, learning rate)."""
        s, config = self.s, self.s.config
        total = torch.zeros((), device=s.device)
        for _ in range(config.gradient_accumulation):
            ids = self._batch_ids()
            loss = self.micro_loss(ids) / (len(ids) * config.gradient_accumulation)
            observed = s.processes.sum_(loss.detach().clone())
            if not torch.isfinite(observed):
                kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                        else "no checkpoint had been saved yet")
                raise TrainingDiverged(
                    f"the loss became {float(observed)} at step {self.step + 1}: training stopped before the weights took "
                    f"it; {kept}. Lower learning_rate (now {config.learning_rate:g}), prefer bf16 to fp16, or look for "
                    "broken images in the dataset")
            total += observed
            if loss.requires_grad:  # a process with no example in a short last batch has nothing to add
                (s.scaler.scale(loss) if s.scaler is not None else loss).backward()
            self.micro += 1
        params = s.network.parameters()
        sum_gradients(params, s.processes)
        if s.scaler is not None:
            s.scaler.unscale_(s.optimizer)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        lr = s.schedule.get_last_lr()[0]
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        s.schedule.step()
        s.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(total), float(lr)

    # -- watching ----------------------------------------------------------------------------------------
    def validation_loss(self) -> float:
        """The objective's loss on the held-out images at fixed timesteps and noise (no weights, no dropout):
        the mean squared error for a LoRA, the consistency distance for distillation."""
        s = self.s
        s.network.train(False)
        total, count = 0.0, 0
        try:
            with torch.no_grad():
                for example in s.validation:
                    latents = s.validation_latents[example.index].to(s.device)[None]
                    draws = self.objective.validation_draws(tuple(latents.shape), example.index)
                    draw = Draw(torch.cat([d.noise for d in draws]), torch.cat([d.index for d in draws]))
                    losses = self.objective.example_losses(
                        latents.expand(len(draws), -1, -1, -1), draw, self._predictor([example] * len(draws)),
                        self._cond([example.caption] * len(draws)), self._uncond(len(draws)), weighted=False)
                    total += float(losses.sum())
                    count += len(draws)
        finally:
            s.network.train(True)
        return total / count

    def samples(self) -> Path:
        from hayai.training.samples import sample_grid

        s, config = self.s, self.s.config
        few_step = few_step_settings(config)
        steps, cfg, sampler = ((few_step["steps"], few_step["cfg_scale"], few_step["sampler"]) if few_step
                               else (config.sample_steps, config.sample_cfg, None))
        s.network.train(False)
        try:
            # under the training's autocast: the VAE stays in float32 (for encoding) while latents are half
            with s.whole_pipeline() as pipe, s.autocast():
                grid = sample_grid(pipe, s.family, list(config.sample_prompts), list(config.sample_seeds),
                                   steps=steps, cfg=cfg, width=config.resolution, height=config.resolution, sampler=sampler,
                                   caption=f"step {self.step}, {config.output_name}")  # the step first: the title band cuts at the grid width
        finally:
            s.network.train(True)
        path = self.run_dir / "samples" / f"step-{self.step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path, pnginfo=grid.info.pop("pnginfo"))
        return path

    def chart(self) -> None:
        from hayai.training.samples import loss_chart

        name = self.s.config.output_name
        self.files["chart"] = str(loss_chart(self.run_dir / "loss.png", self.losses, self.val_losses, title=f"{name}: loss"))
        (self.run_dir / "metrics.json").write_text(json.dumps({"loss": self.losses, "val_loss": self.val_losses, "lr": self.lrs}))

    def log(self) -> None:
        rows = []
        for name, values in (("loss", self.losses), ("val_loss", self.val_losses), ("lr", self.lrs)):
            rows += [(step, name, value) for step, value in values[self._logged[name]:]]
            self._logged[name] = len(values)
        self.store.update_training(self.run_id, last_step=self.step, metrics=rows)

    # -- files -------------------------------------------------------------------------------------------
    def metadata(self, finished: str | None) -> dict[str, str]:
        from hayai.dataset.check import caption_tags

        s = self.s
        tags: dict[str, dict[str, int]] = {}
        dirs: dict[str, dict] = {}
        for item in s.manifest.split("train"):
            folder = Path(item.source).parent.as_posix()
            folder = Path(s.manifest.source).name if folder == "." else folder
            counts = tags.setdefault(folder, {})
            for tag in caption_tags([item.caption])[0]:
                counts[tag] = counts.get(tag, 0) + 1
            dirs.setdefault(folder, {"n_repeats": item.repeats, "img_count": 0})["img_count"] += 1
        epoch = math.ceil(self.micro / self.per_epoch) if self.micro else 0
        metadata = ss_metadata(s.config.to_dict(), family=s.family, model_name=self.source.name, model_hash=self.model_hash,
                               train_images=len(s.train), batches_per_epoch=self.per_epoch, epoch=epoch, step=self.step,
                               epochs=math.ceil(s.config.steps * s.config.gradient_accumulation / self.per_epoch),
                               tag_frequency=tags, dataset_dirs=dirs, started_at=self.started, finished_at=finished,
                               session_id=self.session_id, network_dim=s.config.rank, network_alpha=s.config.alpha)
        few_step = few_step_settings(s.config)
        if few_step:  # read by hayai.speed.few_step: the settings it needs, and the model it was distilled from
            metadata[FEW_STEP_KEY] = json.dumps({**few_step, "model_hash": self.model_hash, "model": self.source.name,
                                                 "teacher_cfg": s.config.teacher_cfg})
            metadata["ss_training_comment"] = (f"LCM few-step LoRA distilled with hayai from {self.source.name}: "
                                               f"{few_step['steps']} steps, LCM sampler, CFG 1")
        return metadata

    def write_lora(self, folder: Path, finished: str | None = None) -> Path:
        path = Path(folder) / f"{self.s.config.output_name}.safetensors"
        return save_kohya(path, self.s.network, self.s.pipe, self.s.family, self.metadata(finished))

    def checkpoint(self, rng: dict) -> None:
        if self.last_checkpoint_step == self.step:
            return
        with self.timer.phase("save"):
            path = ckpt.save_checkpoint(self.run_dir, self.step, self.state(rng), self.write_lora)
            ckpt.prune_checkpoints(self.run_dir, self.s.config.keep_checkpoints, protect=path)
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        self.files["checkpoint"] = str(path)


def sum_gradients(params: list, processes: Processes) -> None:
    """Sum the LoRA's gradients over the processes (each process's loss is already divided by the global batch)."""
    if processes.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = processes.sum_(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def few_step_settings(config) -> dict | None:
    """How a LoRA distilled by `config` samples (the few-step metadata's settings), or None for a plain LoRA."""
    if config.method != "lcm":
        return None
    return {"method": "LCM", "steps": config.distill_steps, "cfg_scale": 1.0, "sampler": "LCM", "schedule_type": "Uniform"}
