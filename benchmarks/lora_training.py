"""LoRA training speed and memory: hayai against the plain diffusers + peft recipe, same model, data and settings.

Variants, each in a fresh process so peak memory is its own (the CUDA allocator's peak on a GPU, the peak
resident set on a CPU, with glibc told to hand freed memory back so RSS follows live tensors):
- `recipe`: what diffusers' `examples/text_to_image/train_text_to_image_lora.py` does, reduced to its loop:
  `unet.add_adapter(LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules=[to_k, to_q, to_v,
  to_out.0]))`, AdamW on the LoRA parameters, every step VAE-encodes the images (`latent_dist.sample()`) and
  runs the text encoder, DDPM noise, MSE on the noise, gradient clipping at 1.0, the same precision;
- `hayai-nocache`: `train_lora` with latents and text embeddings not cached: the same work per step;
- `hayai`: `train_lora` as it runs by default: latents and caption embeddings cached once before training.
Peak memory is read over the same steps, 2..N-1. Both hayai runs use the recipe's settings (rank, alpha = rank, lr, batch, steps, plain MSE: min-SNR off, no
validation or samples during the timed steps). Steps per second are timed from the end of step 2 to the end
of step N-1: the first two warm up, and hayai's last step also writes its checkpoint and loss chart. Prints JSON; `--write` stores it in results/lora_training_<device>.json.

`--calibrate` measures instead what the training planner models: the activations kept for the backward
pass of a real SD1.5 U-Net (random weights, float32, CPU) with LoRA layers on its attention, against the
inference estimate `costs.denoiser_activation_bytes` (hayai.memory.training.TRAIN_ACTIVATION_FACTOR), with
and without gradient checkpointing.

Usage: python benchmarks/lora_training.py [--model demo|tiny] [--steps 30] [--batch 4] [--repeats 2] [--write] | --calibrate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proc_memory import status_kib  # noqa: E402 (a sibling module: run as python benchmarks/...)

_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1"}


def _reexec_with_env() -> None:
    """Run again under `_ENV` (glibc's settings are read at start), before torch is imported. Only when run
    as a script: `build_model` and `build_data` are imported by benchmarks/gpu_check.py."""
    if any(os.environ.get(k) != v for k, v in _ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_ENV})

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("recipe", "hayai-nocache", "hayai")
MIB = 2**20


class Peak:
    """Peak memory from now on: the CUDA allocator's, or the process's resident set (Linux)."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = int(torch.cuda.memory_allocated())
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = status_kib("VmRSS") * 1024

    def read(self) -> tuple[int, int]:
        """(peak, what the measured code added to what was there when it started)."""
        import torch

        peak = int(torch.cuda.max_memory_allocated()) if self.cuda else status_kib("VmHWM") * 1024
        return peak, peak - self.base


# -- the setup both sides share -------------------------------------------------------------------------
def build_model(name: str, folder: Path) -> Path:
    import torch

    if name == "demo":
        from hayai.demo.architecture import build_pipeline

        pipe = build_pipeline(seed=0)
    else:
        from hayai.models.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("sd1")
    with torch.no_grad():
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_data(folder: Path, count: int = 16) -> Path:
    from hayai.demo.shapes import samples

    folder.mkdir(parents=True, exist_ok=True)
    for i, (_, caption, image) in enumerate(samples(21, count)):
        image.save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(caption)
    return folder


# -- the variants (each runs in its own process) -------------------------------------------------------
def run_recipe(model: Path, data: Path, *, steps: int, batch: int, rank: int, lr: float, device: str) -> dict:
    """The diffusers + peft LoRA recipe (train_text_to_image_lora.py), its training loop only."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from PIL import Image

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(device)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    files = sorted(data.glob("*.png"))
    pixels = [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
              for f in files]
    captions = [f.with_suffix(".txt").read_text() for f in files]
    marks = []
    for step in range(steps):
        ids = [(step * batch + k) % len(files) for k in range(batch)]
        images = torch.stack([pixels[i] for i in ids]).to(device)
        latents = vae.encode(images).latent_dist.sample() * vae.config.scaling_factor
        tokens = tokenizer([captions[i] for i in ids], padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids.to(device)
        hidden = text_encoder(tokens, return_dict=False)[0]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, hidden, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        if step == 0:
            peak = Peak(device)
        if step == steps - 2:  # step N-1, as hayai's is read
            reading = peak.read()
    return {"steps_per_s": (steps - 3) / (marks[-2] - marks[1]), "peak_bytes": reading, "final_loss": float(loss.detach())}


def run_hayai(model: Path, data: Path, *, steps: int, batch: int, rank: int, lr: float, device: str, cache: bool) -> dict:
    import torch

    from hayai.store import Store
    from hayai.training import TrainConfig, train_lora

    marks: dict[int, float] = {}
    peak, reading = [None], [None]

    def progress(event) -> None:
        if event.phase == "train":
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            marks[event.step] = time.perf_counter()
            if event.step == 1:
                peak[0] = Peak(device)
            if event.step == steps - 1:  # as timed: the last step also writes the LoRA and draws the loss chart
                reading[0] = peak[0].read()

    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(
            dataset=str(data), model=str(model), output_name="bench", output_dir=str(Path(scratch) / "run"), steps=steps,
            batch_size=batch, rank=rank, alpha=rank, learning_rate=lr, lr_scheduler="constant", warmup_steps=0,
            min_snr_gamma=0, validation_fraction=0.0, sample_every=0, checkpoint_every=steps, device=device.split(":")[0],
            mixed_precision="no" if device == "cpu" else None, cache_latents=cache, cache_text_embeddings=cache,
        )
        os.environ["HAYAI_HOME"] = str(Path(scratch) / "home")
        result = train_lora(config, progress=progress, store=Store(Path(scratch) / "h.db"))
    return {"steps_per_s": (steps - 3) / (marks[steps - 1] - marks[2]), "peak_bytes": reading[0],
            "final_loss": result.losses[-1][1], "plan": result.plan["reasons"]}


# -- calibration ----------------------------------------------------------------------------------------
def calibrate(sizes: tuple[int, ...] = (256, 384)) -> dict:
    """Kept activations of a training step against the inference estimate, at two sizes; the factor is the
    slope between them, so constant costs (oneDNN's copy of the largest conv weight on a CPU) cancel out."""
    import gc

    import torch

    from hayai.memory import costs
    from hayai.memory.facts import facts_for_architecture
    from hayai.memory.training import CHECKPOINTED_FACTOR, TRAIN_ACTIVATION_FACTOR
    from hayai.models.architectures import build_component
    from hayai.training.lora_layers import LoraNetwork, find_targets

    torch.set_num_threads(1)
    facts = facts_for_architecture("sd15")
    unet = build_component("sd15", "unet", device="cpu", dtype=torch.float32, seed=0)
    unet.requires_grad_(False)
    network = LoraNetwork(find_targets("unet", unet, ("to_q", "to_k", "to_v", "to_out.0")), rank=16, alpha=16)

    class _Pipe:  # what LoraNetwork.attach needs: a `unet` attribute
        pass

    pipe = _Pipe()
    pipe.unet = unet
    points, factors = [], {}
    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing()
        for size in sizes:
            h = size // 8
            inputs = dict(sample=torch.randn(1, 4, h, h), timestep=torch.tensor([500]),
                          encoder_hidden_states=torch.randn(1, 77, 768))
            network.attach(pipe)
            gc.collect()
            Path("/proc/self/clear_refs").write_text("5")
            base = status_kib("VmRSS")
            out = unet(**inputs).sample
            out.float().pow(2).mean().backward()
            peak = (status_kib("VmHWM") - base) * 1024
            network.detach()
            del out
            for p in network.parameters():
                p.grad = None
            estimate = costs.denoiser_activation_bytes(facts, size, size, 1, "float32", "sdpa")
            points.append({"size": size, "batch": 1, "gradient_checkpointing": checkpointing,
                           "inference_estimate_mib": round(estimate / MIB, 1), "step_peak_mib": round(peak / MIB, 1)})
        first, last = points[-len(sizes)], points[-1]
        slope = (last["step_peak_mib"] - first["step_peak_mib"]) / (last["inference_estimate_mib"] - first["inference_estimate_mib"])
        factors["checkpointed" if checkpointing else "plain"] = {
            "measured": round(slope, 2), "shipped": CHECKPOINTED_FACTOR if checkpointing else TRAIN_ACTIVATION_FACTOR}
    return {"what": "peak of a LoRA training step (forward + backward) above the weights / the inference activation "
                    "estimate; SD1.5 U-Net, random weights, float32, CPU, LoRA rank 16 on the attention projections",
            "factors": factors, "points": points, "torch": torch.__version__}


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# -- the driver -----------------------------------------------------------------------------------------
def _child(args) -> None:
    settings = dict(steps=args.steps, batch=args.batch, rank=args.rank, lr=args.lr, device=args.device)
    if args.variant == "recipe":
        out = run_recipe(Path(args.model_dir), Path(args.data), **settings)
    else:
        out = run_hayai(Path(args.model_dir), Path(args.data), cache=args.variant == "hayai", **settings)
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("demo", "tiny"), default="demo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of all variants; each keeps its fastest")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        _child(args)
        return
    if args.calibrate:
        out = calibrate()
        print(json.dumps(out, indent=2))
        if args.write:
            (RESULTS / "lora_training_calibration_cpu.json").write_text(json.dumps(out, indent=2) + "\n")
        return
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        model = build_model(args.model, Path(scratch) / "model")
        data = build_data(Path(scratch) / "data")
        results: dict[str, dict] = {}
        for _ in range(args.repeats):  # rounds of all variants in turn; each keeps its fastest run (shared machines)
            for variant in VARIANTS:
                proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--model-dir", str(model), "--data",
                                       str(data), "--steps", str(args.steps), "--batch", str(args.batch), "--rank",
                                       str(args.rank), "--lr", str(args.lr), "--device", args.device],
                                      capture_output=True, text=True)
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode or not lines:
                    raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
                run = json.loads(lines[-1][len("RESULT "):])
                if variant not in results or run["steps_per_s"] > results[variant]["steps_per_s"]:
                    results[variant] = run
    for value in results.values():
        peak, added = value.pop("peak_bytes")
        value["peak_mib"], value["added_mib"] = round(peak / MIB, 1), round(added / MIB, 1)
        value["steps_per_s"] = round(value["steps_per_s"], 3)
    recipe = results["recipe"]
    out = {
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores" if args.device == "cpu" else args.device,
        "torch": torch.__version__, "threads": 1 if args.device == "cpu" else None,
        "model": args.model, "repeats": args.repeats, "steps": args.steps, "batch": args.batch, "rank": args.rank, "precision": "fp32",
        "variants": results,
        "speed_vs_recipe": {k: round(results[k]["steps_per_s"] / recipe["steps_per_s"], 3) for k in VARIANTS[1:]},
        "memory_vs_recipe": {k: round(results[k]["peak_mib"] / recipe["peak_mib"], 3) for k in VARIANTS[1:]},
        "added_memory_vs_recipe": {k: round(results[k]["added_mib"] / recipe["added_mib"], 3) for k in VARIANTS[1:]},
    }
    print(json.dumps(out, indent=2))
    if args.write:
        name = "cpu" if args.device == "cpu" else "gpu"
        (RESULTS / f"lora_training_{name}.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    _reexec_with_env()
    main()
