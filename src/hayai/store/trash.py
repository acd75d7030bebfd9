"""Deleting a run's images without losing them: they move to `$HAYAI_HOME/trash/run-<id>/`, the history
keeps the run and points at the moved files, and emptying the trash is the user's own `rm`.

Only files hayai made and keeps under its own folders are moved: images in the output folder and a
sweep's folder. Input images (`$HAYAI_HOME/inputs`, which other runs may name), models and LoRAs are
never touched, whatever a run lists.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hayai import paths

__all__ = ["trash_dir", "trash_run", "in_trash"]


def trash_dir() -> Path:
    return paths.hayai_home() / "trash"


def in_trash(path: str | os.PathLike) -> bool:
    return Path(path).resolve().is_relative_to(trash_dir().resolve())


def trash_run(store, run_id: int) -> list[Path]:
    """Move run `run_id`'s images to the trash; the paths they now have (files already gone are skipped)."""
    run = store.run(run_id)
    movable = [paths.outputs_dir().resolve(), (paths.hayai_home() / "sweeps").resolve()]
    target = trash_dir() / f"run-{run_id}"
    outputs, moved = [], []
    for output in run.outputs:
        path = Path(output).resolve()
        if in_trash(path) or not path.is_file() or not any(path.is_relative_to(folder) for folder in movable):
            outputs.append(output)
            continue
        target.mkdir(parents=True, exist_ok=True)
        destination = target / path.name
        shutil.move(path, destination)  # a rename on one file system
        outputs.append(str(destination))
        moved.append(destination)
    if moved:
        store.set_outputs(run_id, outputs, {"event": "trashed", "files": len(moved), "folder": str(target)})
    return moved
