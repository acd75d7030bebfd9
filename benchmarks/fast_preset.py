"""What the `fast` speed preset needs before `speed_levers.py` can measure it: a few-step LoRA per model.

    python benchmarks/fast_preset.py --home /tmp/hayai-bench-fast            # both parts (~5 min on 2 cores)
    HAYAI_HOME=/tmp/hayai-bench-fast python benchmarks/speed_levers.py --part quality \\
        --levers exact,speed=balanced,speed=fast,steps=4+sampler=LCM+cfg_scale=1
    HAYAI_HOME=/tmp/hayai-bench-fast python benchmarks/speed_levers.py --part time --levers exact,speed=balanced,speed=fast

distill:  `hayai train distill` (train_lora with method='lcm') on the built-in demo model, on `--images`
          pictures of its shapes world (captions as its prompts are written; `--data renders`: the demo
          model's own images of those captions, made by `hayai dataset render`, for a model that comes
          with no images), `--steps` steps of batch
          `--batch`: the LoRA lands in the benchmark home's LoRA catalog, where `speed=fast` finds it by the
          model's hash. Prints the run's seconds, training and validation losses.
stand-in: for `--model` (default arch:sd15, random weights of the real architecture, which only time is
          measured on), a LoRA of the distillation's shape (rank, layers) with random weights and the
          few-step metadata naming that model: a fast run on it costs what a fast run on a real distilled
          LoRA costs (4 LCM steps at CFG 1, the LoRA fused into the weights), and says nothing of quality.

Prints JSON; merges it into benchmarks/results/fast_preset_<machine>.json (--no-write to skip).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, describe_machine

DISTILL_NAME = "hayai-shapes-lcm-4step"


def distill(*, images: int, steps: int, batch: int, rank: int, learning_rate: float, seed: int, data_from: str) -> dict:
    from hayai.demo import BUILTIN_MODEL
    from hayai.demo.shapes import samples
    from hayai.paths import hayai_home
    from hayai.training import TrainConfig, train_lora

    data = hayai_home() / "bench-data" / f"{data_from}-{seed}-{images}"
    render_seconds = None
    if data_from == "renders":  # the model's own images of the same captions: `hayai dataset render`
        from hayai.dataset.render import render_dataset
        from hayai.generation.engine import Engine

        start = time.perf_counter()
        render_dataset(Engine(device="cpu"), [caption for _, caption, _ in samples(seed, images)], data, per_prompt=1,
                       settings={"model": str(BUILTIN_MODEL)}, seed=seed)
        render_seconds = round(time.perf_counter() - start, 1)
    elif not data.is_dir():
        data.mkdir(parents=True)
        for i, (_, caption, image) in enumerate(samples(seed, images)):
            image.save(data / f"{i:05d}.png")
            (data / f"{i:05d}.txt").write_text(caption)
    config = TrainConfig(dataset=str(data), model=str(BUILTIN_MODEL), output_name=DISTILL_NAME, method="lcm", steps=steps,
                         batch_size=batch, rank=rank, learning_rate=learning_rate, sample_every=0, overwrite=True,
                         validation_fraction=0.05, validation_every=max(1, steps // 4), checkpoint_every=steps)
    start = time.perf_counter()
    result = train_lora(config, progress=lambda e: print(f"{e.phase} {e.step}/{e.total} {e.loss or ''}", file=sys.stderr)
                        if e.phase == "train" and e.step % 25 == 0 else None)
    return {"lora": str(result.lora_path), "seconds": round(time.perf_counter() - start, 1), "timings": result.timings,
            "config": {k: result.config[k] for k in ("method", "distill_steps", "teacher_cfg", "steps", "batch_size", "rank",
                                                     "learning_rate", "target_modules", "resolution")},
            "data": data_from, "render_seconds": render_seconds,
            "train_images": len(list(data.glob("*.png"))), "validation": result.validation,
            "loss_first_last": [result.losses[0], result.losses[-1]]}


def stand_in(model: str, *, rank: int, seed: int) -> dict:
    import torch

    from hayai.lora.catalog import loras_dir
    from hayai.lora.synthetic import save_lora
    from hayai.models.catalog import Catalog, source_hash
    from hayai.models.loading import load_pipeline
    from hayai.speed.few_step import METADATA_KEY
    from hayai.store import Store
    from hayai.training.export import kohya_state
    from hayai.training.lora_layers import DISTILL_TARGETS, LoraNetwork

    with Store() as store:
        source = Catalog(store).resolve(model)
        model_hash = source_hash(store, source)
    pipe = load_pipeline(source, torch_dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = LoraNetwork.for_pipeline(pipe, source.family, rank=rank, alpha=rank, target_modules=DISTILL_TARGETS)
        for layer in network.layers.values():  # not zero: a trained LoRA's update is not
            torch.nn.init.normal_(layer.up.weight, std=1e-3)
    name = f"{model.replace(':', '-')}-lcm-standin"
    path = save_lora(kohya_state(network, pipe, source.family), loras_dir() / f"{name}.safetensors", metadata={
        METADATA_KEY: json.dumps({"method": "LCM", "steps": 4, "cfg_scale": 1.0, "sampler": "LCM",
                                  "schedule_type": "Uniform", "model_hash": model_hash, "model": model}),
        "ss_training_comment": "random weights in the shape of a distilled LoRA: for timing only"})
    return {"lora": str(path), "model": model, "rank": rank, "layers": len(network.targets),
            "parameters": network.num_parameters()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/hayai-bench-fast"), help="the benchmark's HAYAI_HOME")
    parser.add_argument("--part", choices=("distill", "stand-in"), action="append")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--data", choices=("shapes", "renders"), default="shapes",
                        help="distill: the shapes world's own pictures, or the demo model's renders of their captions")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--model", default="arch:sd15", help="stand-in: the model to time the fast preset on")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    os.environ["HAYAI_HOME"] = str(args.home)

    import torch

    torch.set_num_threads(args.threads)
    parts = args.part or ["distill", "stand-in"]
    stem, machine = describe_machine("cpu", args.threads)
    result: dict = {}
    if "distill" in parts:
        key = "distill:demo" + (":renders" if args.data == "renders" else "")
        result[key] = {"machine": machine, **distill(images=args.images, steps=args.steps, batch=args.batch,
                                                     rank=args.rank, learning_rate=args.learning_rate, seed=args.seed,
                                                     data_from=args.data)}
    if "stand-in" in parts:
        result[f"stand-in:{args.model}"] = stand_in(args.model, rank=args.rank, seed=args.seed)
    print(json.dumps(result, indent=2))
    if not args.no_write:
        out = RESULTS / f"fast_preset_{stem}.json"
        merged = json.loads(out.read_text()) if out.exists() else {}
        merged.update(result)
        out.write_text(json.dumps(merged, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
