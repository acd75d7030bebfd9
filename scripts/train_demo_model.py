"""Train hayai's built-in demo model from scratch (see hayai.demo.train); resumable: run it again.

    python scripts/train_demo_model.py                      # the shipped model's recipe
    python scripts/train_demo_model.py --unet-steps 500 --out /tmp/shapes --work-dir /tmp/shapes-work
    python scripts/train_demo_model.py --stop-after-steps 1000   # in slices: each run stops, checkpointed
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from hayai.demo.train import Paused, TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float, "str": str}[field.type]
            parser.add_argument(flag, type=kind, default=field.default, metavar=field.type.upper())
    args = parser.parse_args(argv)
    try:
        out = train(TrainConfig(**vars(args)))
    except Paused as paused:
        print(paused)
        return 0
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
