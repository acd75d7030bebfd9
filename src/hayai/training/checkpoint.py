"""Checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding `state.pt` (the LoRA weights, the optimizer,
the learning-rate schedule, the gradient scaler, the step and the number of micro-batches consumed (the
data order is a function of the seed and the epoch, see `data.epoch_plan`), the RNG states: torch's
global CPU and CUDA generators and the run's own generator of noise, timesteps and caption changes,
the loss history, and the resolved config) and the LoRA at that step as a kohya file, usable on its own.

Folders are written under a temporary name and renamed, so a crash never leaves half a checkpoint; the
newest K are kept. `state.pt` is read with `torch.load(weights_only=True)`: it holds tensors and plain
data only.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

__all__ = ["CHECKPOINTS", "checkpoint_dirs", "latest_checkpoint", "load_state", "prune_checkpoints", "rng_state",
           "restore_rng", "save_checkpoint"]

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def rng_state(generator: torch.Generator) -> dict:
    """The random state that training draws from: torch's global generators and the run's own."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(run_dir: Path, step: int, state: dict, write_lora) -> Path:
    """Write `state` (and, through `write_lora(path)`, the LoRA file) as the checkpoint of `step`."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:06d}"
    partial = root / f"step-{step:06d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(state, partial / STATE_FILE)
    write_lora(partial)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final


def prune_checkpoints(run_dir: Path, keep: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (never `protect`); returns what was deleted."""
    found = checkpoint_dirs(run_dir)
    doomed = [path for _, path in found[:-keep] if path != protect] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def load_state(folder: Path) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
