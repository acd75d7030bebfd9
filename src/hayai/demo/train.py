"""Train the built-in demo model from scratch on the shapes world, on a CPU, in one sitting.

    python scripts/train_demo_model.py --out src/hayai/models/builtin/hayai-shapes

Four stages, each resumable (a checkpoint every `checkpoint_every` steps; run the same command again):
1. vae: the autoencoder learns to squeeze 64x64 shape images into 16x16x4 latents and back (L1 + MSE, a
   whisper of KL), on images rendered fresh for every step;
2. latents: a fixed pool of captioned images is rendered and encoded once (mean and std of each
   latent), and the latent scale is set so the latents have unit variance, as SD's 0.18215 does;
3. unet: the UNet learns to predict v (SD2's v-prediction on SD1's schedule) for the prompt as the
   frozen, randomly initialised text encoder reads it, each sample's x0 error weighted within
   [1, min-SNR gamma], captions dropped now and then so classifier-free guidance has an unconditional
   branch to push against; an EMA of the weights is what ships;
4. export: a diffusers folder (safetensors) plus `hayai_model.json` with the training facts, and,
   if asked, the adherence figures of the finished model.

Every random draw of step `s` comes from a generator seeded with (seed, stage, s), so a run is a pure
function of the config: resuming gives the same weights as not stopping, and two runs give the same
model on the same machine, torch version and thread count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Paused", "TrainConfig", "train"]


@dataclass
class TrainConfig:
    out: str = "src/hayai/models/builtin/hayai-shapes"  # where the finished diffusers folder goes
    work_dir: str = "demo-training"  # checkpoints, the latent pool and the loss log (loss.tsv)
    seed: int = 0  # everything random derives from this
    threads: int = 1  # torch CPU threads; 1 is fastest on a busy 2-core machine, and part of reproducibility
    # -- stage 1: the autoencoder
    vae_steps: int = 3000  # optimizer steps; shapes that survive an encode-decode: 94% after 1,500 (small ones on grey blur round), 98.8% after 3,000
    vae_batch: int = 8  # images per step, rendered fresh: 3/4 collages of shapes, 1/4 real scenes
    vae_lr: float = 1e-3  # AdamW learning rate, cosine-decayed to 5% of itself
    vae_kl_weight: float = 1e-6  # SD's KL weight: the latent stays near-deterministic but bounded
    # -- stage 2: the latent pool
    pool_size: int = 12000  # captioned images rendered and encoded once for the UNet stage
    # -- stage 3: the denoiser
    unet_steps: int = 3500  # optimizer steps (2,500 gave colour 61%, shape 68%; 3,500: 85%, 78%)
    unet_batch: int = 32  # latents per step
    unet_lr: float = 1e-3  # AdamW peak learning rate
    warmup_steps: int = 100  # linear warm-up, then cosine decay to 5% of the peak
    weight_decay: float = 0.01  # AdamW weight decay
    # the text encoder stays as initialised (random): trained along with the UNet it learned to drop the
    # position words (which the UNet could not use yet) and position never came; frozen, every word keeps
    # its voice and the UNet learns to read them (measured on otherwise identical runs: no position gap at
    # 750 steps trained, a growing one frozen)
    train_text_encoder: bool = False
    caption_dropout: float = 0.1  # share of captions replaced by "" (the unconditional branch for CFG)
    min_snr_gamma: float = 5.0  # min-SNR loss weighting (Hang et al. 2023): low-noise steps weigh at most this; 0: off
    high_noise_weight: float = 1.0  # each step's x0 error weighs at least this (high noise: layout); 0: min-SNR alone
    ema_decay: float = 0.999  # EMA of the trained weights (what ships)
    # -- bookkeeping
    log_every: int = 25  # steps per row of loss.tsv (the mean loss over those steps)
    checkpoint_every: int = 250  # steps between checkpoints (and at the end of every stage)
    eval_every: int = 500  # UNet steps between quick adherence checks (8-step samples); 0: never
    final_eval: bool = True  # measure the exported model's adherence (120 images) into hayai_model.json
    stop_after_steps: int = 0  # end this run, checkpointed, after this many optimizer steps (train in slices); 0: run to the end


STAGES = ("vae", "latents", "unet", "export", "done")


class Paused(Exception):
    """The run used up `stop_after_steps` and saved a checkpoint; running again resumes from it."""

    def __init__(self, stage: str, step: int):
        super().__init__(f"paused at {stage} step {step}; run the same command again to resume")
        self.stage, self.step = stage, step


class _Slice:
    """Counts this run's optimizer steps against `stop_after_steps`."""

    def __init__(self, limit: int):
        self.limit, self.done = limit, 0

    def step(self) -> bool:
        """Count one step; True when this run should stop after it."""
        self.done += 1
        return self.limit > 0 and self.done >= self.limit


# -- helpers -------------------------------------------------------------------------------------
def _generator(config: TrainConfig, stage: str, step: int):
    """The torch generator of one step of one stage: seeded by (seed, stage, step) alone."""
    import numpy as np
    import torch

    key = np.random.default_rng([config.seed, STAGES.index(stage), step]).integers(2**62)
    return torch.Generator().manual_seed(int(key))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _to_tensor(images):
    """PIL images -> a float tensor in [-1, 1], NCHW."""
    import numpy as np
    import torch

    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


class LossLog:
    """loss.tsv: one row per `log_every` steps (stage, step, loss, lr, seconds) plus eval rows."""

    HEADER = "stage\tstep\tloss\tlr\tseconds\tnote\n"

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            path.write_text(self.HEADER)

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop rows written after the checkpoint a run resumes from, so the log has no repeats."""
        rows = self.path.read_text().splitlines()[1:]
        keep = []
        for row in rows:
            row_stage, row_step = row.split("\t")[:2]
            if STAGES.index(row_stage) < STAGES.index(stage) or (row_stage == stage and int(row_step) <= step):
                keep.append(row + "\n")
        self.path.write_text(self.HEADER + "".join(keep))

    def write(self, stage: str, step: int, loss: float, lr: float, seconds: float, note: str = "") -> None:
        with self.path.open("a") as f:
            f.write(f"{stage}\t{step}\t{loss:.5f}\t{lr:.2e}\t{seconds:.1f}\t{note}\n")


class Checkpoint:
    """Everything needed to resume: stage, step, weights, optimizer, EMA, seconds spent so far."""

    def __init__(self, work: Path):
        self.path = work / "checkpoint.pt"

    def load(self) -> dict | None:
        import torch

        return torch.load(self.path, weights_only=True) if self.path.exists() else None

    def save(self, state: dict) -> None:
        import torch

        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)


def _progress(total: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    task = progress.add_task(description, total=total, info="")
    return progress, task


# -- the run -------------------------------------------------------------------------------------
def train(config: TrainConfig) -> Path:
    """Run (or resume) every stage; returns the exported model folder. Raises `Paused` when
    `stop_after_steps` ends the run early (the checkpoint is saved; call again to go on)."""
    import torch

    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    log = LossLog(work / "loss.tsv")
    checkpoint = Checkpoint(work)

    from hayai.demo.architecture import build_pipeline

    pipe = build_pipeline(config.seed)
    state = checkpoint.load() or {"stage": "vae", "step": 0, "seconds": 0.0}
    if "vae" in state:
        pipe.vae.load_state_dict(state["vae"])
    log.truncate_after(state["stage"], state["step"])
    clock = {"start": time.perf_counter(), "before": state["seconds"]}

    def elapsed() -> float:
        return clock["before"] + time.perf_counter() - clock["start"]

    run_slice = _Slice(config.stop_after_steps)
    if state["stage"] == "vae":
        state = _train_vae(config, pipe.vae, state, checkpoint, log, elapsed, run_slice)
    pool = _latent_pool(config, pipe, work, elapsed)
    if state["stage"] == "latents":
        state = {**state, "stage": "unet", "step": 0, "scaling_factor": pool["scaling_factor"]}
        checkpoint.save(state)
    if state["stage"] == "unet":
        state = _train_unet(config, pipe, pool, state, checkpoint, log, elapsed, run_slice)
    pipe.unet.load_state_dict(state["unet"])
    pipe.text_encoder.load_state_dict(state["text_encoder"])
    _swap_in(_trained_params(config, pipe), state["ema"])  # the EMA weights ship
    pipe.vae.register_to_config(scaling_factor=pool["scaling_factor"])
    out = _export(config, pipe, state, work, elapsed)
    checkpoint.save({**state, "stage": "done", "seconds": elapsed()})
    return out


def _train_vae(config, vae, state, checkpoint, log, elapsed, run_slice) -> dict:
    import numpy as np
    import torch

    from hayai.demo.shapes import render_collage, samples

    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    if "vae_optimizer" in state:
        optimizer.load_state_dict(state["vae_optimizer"])
    vae.train()
    validation = _to_tensor(image for _, _, image in samples([config.seed, 9], 16))  # real scenes, never trained on
    progress, task = _progress(config.vae_steps, "1/3 autoencoder")
    running = list(state.get("running", []))  # losses since the last loss.tsv row (a resumed run finishes the row)
    with progress:
        progress.update(task, completed=state["step"])
        for step in range(state["step"], config.vae_steps):
            lr = config.vae_lr * _lr_factor(step, config.vae_steps, warmup=50)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rng = np.random.default_rng([config.seed, 1, step])
            scenes = config.vae_batch // 4  # a quarter real scenes, the rest collages
            images = _to_tensor(
                [render_collage(rng) for _ in range(config.vae_batch - scenes)]
                + [image for _, _, image in samples([config.seed, 1, step], scenes)]
            )
            posterior = vae.encode(images).latent_dist
            decoded = vae.decode(posterior.mode()).sample
            error = decoded - images
            loss = error.abs().mean() + error.pow(2).mean() + config.vae_kl_weight * posterior.kl().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(loss.item())
            done = step + 1
            if done % config.log_every == 0 or done == config.vae_steps:
                mean = sum(running) / len(running)
                psnr = _reconstruction_psnr(vae, validation)
                log.write("vae", done, mean, lr, elapsed(), note=f"psnr {psnr:.1f}")
                progress.update(task, info=f"loss {mean:.4f} psnr {psnr:.1f} dB")
                running = []
            pause = run_slice.step()
            if pause or done % config.checkpoint_every == 0 or done == config.vae_steps:
                finished = done == config.vae_steps
                state = {
                    "stage": "latents" if finished else "vae", "step": done, "seconds": elapsed(),
                    "vae": vae.state_dict(), **({} if finished else {"vae_optimizer": optimizer.state_dict(), "running": running}),
                }
                checkpoint.save(state)
            progress.update(task, completed=done)
            if pause and not finished:
                raise Paused("vae", done)
    vae.eval()
    return state


def _reconstruction_psnr(vae, images) -> float:
    import torch

    with torch.no_grad():
        error = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1) - images
    return float(10 * torch.log10(4 / error.pow(2).mean()))


def _latent_pool(config, pipe, work, elapsed) -> dict:
    """Render `pool_size` captioned images, encode them once; cached in work/latents.pt."""
    import torch

    from hayai.demo.shapes import samples

    path = work / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    captions, means = [], []
    progress, task = _progress(config.pool_size, "2/3 latent pool")
    batch = 100
    stream = samples([config.seed, 2], config.pool_size)
    with progress, torch.no_grad():
        for first in range(0, config.pool_size, batch):
            chunk = [next(stream) for _ in range(min(batch, config.pool_size - first))]
            posterior = pipe.vae.encode(_to_tensor(image for _, _, image in chunk)).latent_dist
            means.append(posterior.mean)
            captions += [caption for _, caption, _ in chunk]
            progress.update(task, advance=len(chunk))
    tokenize = lambda texts: pipe.tokenizer(  # noqa: E731
        texts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    mean = torch.cat(means)
    pool = {
        "mean": mean,
        "ids": tokenize(captions),
        "empty_ids": tokenize([""]),
        "scaling_factor": float(1.0 / mean.std()),
    }
    torch.save(pool, path)
    return pool


def _trained_params(config, pipe) -> list:
    """What the denoiser stage trains (and keeps an EMA of): the UNet, and the text encoder unless frozen."""
    return [*pipe.unet.parameters(), *(pipe.text_encoder.parameters() if config.train_text_encoder else [])]


def _train_unet(config, pipe, pool, state, checkpoint, log, elapsed, run_slice) -> dict:
    import torch
    from diffusers import DDPMScheduler

    unet, text_encoder = pipe.unet, pipe.text_encoder
    if "unet" in state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
    params = _trained_params(config, pipe)
    text_encoder.requires_grad_(config.train_text_encoder)
    optimizer = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=config.weight_decay)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    ema = state.get("ema") or [p.detach().clone() for p in params]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = noise_scheduler.alphas_cumprod
    snr_all = alphas / (1 - alphas)
    scale = pool["scaling_factor"]
    count = pool["mean"].shape[0]
    unet.train()
    text_encoder.train()
    progress, task = _progress(config.unet_steps, "3/3 denoiser")
    running = list(state.get("running", [])) if "unet" in state else []
    with progress:
        progress.update(task, completed=state["step"])
        for step in range(state["step"], config.unet_steps):
            lr = config.unet_lr * _lr_factor(step, config.unet_steps, config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            g = _generator(config, "unet", step)
            index = torch.randint(count, (config.unet_batch,), generator=g)
            latents = pool["mean"][index] * scale
            ids = pool["ids"][index]
            dropped = torch.rand(config.unet_batch, generator=g) < config.caption_dropout
            ids = torch.where(dropped[:, None], pool["empty_ids"], ids)
            noise = torch.randn(latents.shape, generator=g)
            timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (config.unet_batch,), generator=g)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            hidden = text_encoder(ids)[0]
            prediction = unet(noisy, timesteps, hidden).sample
            velocity = noise_scheduler.config.prediction_type == "v_prediction"
            target = noise_scheduler.get_velocity(latents, noise, timesteps) if velocity else noise
            per_sample = (prediction - target).pow(2).mean(dim=(1, 2, 3))
            # weigh each sample by its error on x0 (the clean latent): a plain epsilon loss weighs x0 by SNR,
            # next to nothing at high noise, which is where the layout (where the shape goes) is decided;
            # a v loss by SNR + 1. Clamp the x0 weight to [high_noise_weight, min_snr_gamma].
            snr = snr_all[timesteps]
            x0_weight = snr.clamp(min=config.high_noise_weight, max=config.min_snr_gamma or None)
            per_sample = per_sample * x0_weight / (snr + 1 if velocity else snr)
            loss = per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
            running.append(loss.item())
            done = step + 1
            if done % config.log_every == 0 or done == config.unet_steps:
                mean = sum(running) / len(running)
                log.write("unet", done, mean, lr, elapsed())
                progress.update(task, info=f"loss {mean:.4f}")
                running = []
            if config.eval_every and done % config.eval_every == 0 and done < config.unet_steps:
                accuracy = _quick_eval(pipe, ema, params, scale)
                note = " ".join(f"{k}={v:.2f}" for k, v in accuracy.items())
                log.write("unet", done, float("nan"), lr, elapsed(), note=f"eval(8 steps, 60 images) {note}")
                progress.console.print(f"step {done}: {note}")
            pause = run_slice.step()
            if pause or done % config.checkpoint_every == 0 or done == config.unet_steps:
                state = {
                    "stage": "export" if done == config.unet_steps else "unet", "step": done, "seconds": elapsed(),
                    "vae": pipe.vae.state_dict(), "scaling_factor": scale,
                    "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                    "optimizer": optimizer.state_dict(), "ema": ema, "running": running,
                }
                checkpoint.save(state)
            progress.update(task, completed=done)
            if pause and done < config.unet_steps:
                raise Paused("unet", done)
    unet.eval()
    text_encoder.eval()
    return state


def _swap_in(params, values) -> None:
    import torch

    with torch.no_grad():
        for param, value in zip(params, values):
            param.copy_(value)


def _quick_eval(pipe, ema, params, scale) -> dict[str, float]:
    """Adherence of the EMA weights on the 60 fixed prompts, one seed, 8 DPM++ 2M Karras steps."""
    from diffusers import DPMSolverMultistepScheduler

    from hayai.demo.adherence import evaluate_pipeline

    live = [p.detach().clone() for p in params]
    _swap_in(params, ema)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    training_scheduler = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    pipe.vae.register_to_config(scaling_factor=scale)
    try:
        report = evaluate_pipeline(pipe, steps=8, cfg_scale=7.0, seeds=1)
    finally:
        pipe.scheduler = training_scheduler
        _swap_in(params, live)
        pipe.unet.train()
        pipe.text_encoder.train()
    return {k: report.accuracy[k] for k in ("colour", "shape", "position", "size", "background")}


def _export(config, pipe, state, work, elapsed) -> Path:
    """Save the pipeline (safetensors) and hayai_model.json; replace `out_dir` atomically."""
    import torch

    import hayai

    out = Path(config.out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    rows = (work / "loss.tsv").read_text().splitlines()[1:]
    final = {stage: next((float(r.split("\t")[2]) for r in reversed(rows) if r.startswith(stage + "\t") and "eval" not in r), None) for stage in ("vae", "unet")}
    facts = {
        "name": "hayai-shapes",
        "description": "A small text-to-image model trained from scratch on hayai's procedural shapes world "
        "(hayai.demo.shapes): one circle, square or triangle in one of 7 colours, 2 sizes and 5 places, "
        "on a white, black or grey background, 64x64.",
        "prompt_example": "a small red circle at the top left on a white background",
        # what the engine uses when a request leaves them unset; CFG 2 measured best on the shipped model
        # (benchmarks/results/demo_model_adherence_curve_cpu.json); "adherence" records its own settings
        "recommended": {"steps": 20, "cfg_scale": 2.0, "sampler": "DPM++ 2M", "schedule_type": "Karras", "width": 64, "height": 64},
        "parameters": {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("vae", "unet", "text_encoder")},
        "training": {
            "command": "python scripts/train_demo_model.py",
            # the recipe, not where this run kept its files
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "work_dir")},
            "seconds": round(elapsed(), 1),
            "final_loss": final,
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "threads": config.threads,
            },
            "versions": {"hayai": hayai.__version__, "torch": torch.__version__, **_versions()},
        },
    }
    (tmp / "hayai_model.json").write_text(json.dumps(facts, indent=2) + "\n")
    if config.final_eval:
        from hayai.demo.adherence import evaluate
        from hayai.generation.engine import Engine
        from hayai.store import Store

        report = evaluate(str(tmp), engine=Engine(store=Store(work / "eval.db"), device="cpu"))
        facts["adherence"] = {k: v for k, v in report.to_dict().items() if k not in ("failures", "model")}
        (tmp / "hayai_model.json").write_text(json.dumps(facts, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"diffusers": diffusers.__version__, "transformers": transformers.__version__}
