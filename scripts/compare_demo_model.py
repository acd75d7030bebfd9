"""Compare a retrained demo model with the shipped one: weights, training figures and adherence, as JSON.

    python scripts/train_demo_model.py --out /tmp/shapes --work-dir /tmp/shapes-work   # from scratch
    python scripts/compare_demo_model.py /tmp/shapes > result.json

Issue 4's bar for a retrain: every adherence figure within 5 points of the shipped model's. On one machine
kind, torch version and thread count the run is a pure function of its config, so the weights should be
identical; another CPU (other vector kernels) may give other weights, and then the adherence is what counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

WEIGHTS = ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
           "vae/diffusion_pytorch_model.safetensors")
MAX_DROP = 0.05  # issue 4: within 5 points


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from hayai.demo import BUILTIN_MODEL
    from hayai.demo.adherence import evaluate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("retrained", type=Path, help="the diffusers folder train_demo_model.py wrote (--out)")
    parser.add_argument("--shipped", type=Path, default=BUILTIN_MODEL)
    args = parser.parse_args(argv)

    cards = {name: json.loads((folder / "hayai_model.json").read_text())
             for name, folder in (("shipped", args.shipped), ("retrained", args.retrained))}
    settings = {key: cards["shipped"]["adherence"][key] for key in ("steps", "cfg_scale", "sampler", "schedule_type")}
    measured = evaluate(str(args.retrained), **settings)  # at the settings the shipped figures were measured at
    shipped = cards["shipped"]["adherence"]["accuracy"]
    gaps = {key: round(measured.accuracy[key] - shipped[key], 4) for key in shipped}
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count()},
        "weights_identical": {rel: _sha256(args.shipped / rel) == _sha256(args.retrained / rel) for rel in WEIGHTS},
        "training_seconds": {name: card["training"]["seconds"] for name, card in cards.items()},
        "final_loss": {name: card["training"]["final_loss"] for name, card in cards.items()},
        "versions": cards["retrained"]["training"]["versions"],
        "adherence": {"shipped": shipped, "retrained": measured.accuracy, "difference": gaps,
                      "images": measured.images, "settings": settings},
        "within_5_points": all(gap >= -MAX_DROP for gap in gaps.values()),
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0 if result["within_5_points"] else 1


if __name__ == "__main__":
    sys.exit(main())
