"""Nothing lost: concurrent runs each get their own file names, and killed saves leave no litter."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from hayai.generation import imagefile
from hayai.generation.imagefile import claim_name, read_image_metadata, save_image
from hayai.paths import outputs_dir
from hayai.store import Store


def _image() -> Image.Image:
    return Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3))


class _RacedImage:
    """An image whose name another process takes while it is being encoded."""

    def __init__(self, taken):
        self.taken = taken

    def save(self, file, **options):
        _image().save(file, **options)
        self.taken.write_bytes(b"the other process's image")


def test_a_name_taken_during_encoding_moves_the_image_to_the_next_free_name(tmp_path):
    path = tmp_path / "00000-42.png"
    written = save_image(_RacedImage(path), path, infotext="mine", hayai_meta={"who": "me"}, next_free=True)
    assert written == tmp_path / "00000-42-1.png"
    assert path.read_bytes() == b"the other process's image"  # never overwritten
    assert read_image_metadata(written).infotext == "mine"
    assert sorted(os.listdir(tmp_path)) == ["00000-42-1.png", "00000-42.png"]  # no temporary file left


def test_claim_name_skips_existing_names_and_keeps_them(tmp_path):
    temp = tmp_path / ".a.png.0123abcd.tmp"
    temp.write_bytes(b"new")
    (tmp_path / "a.png").write_bytes(b"old")
    (tmp_path / "a-1.png").write_bytes(b"old 1")
    assert claim_name(temp, tmp_path / "a.png") == tmp_path / "a-2.png"
    assert [(tmp_path / name).read_bytes() for name in ("a.png", "a-1.png", "a-2.png")] == [b"old", b"old 1", b"new"]


def test_a_stale_temporary_file_is_removed_by_the_next_save_and_a_fresh_one_kept(tmp_path):
    stale, fresh = tmp_path / ".00000-1.png.0123abcd.tmp", tmp_path / ".00001-2.png.89abcdef.tmp"
    for temp in (stale, fresh):
        temp.write_bytes(b"\x89PNG half an image, its writer killed")
    old = time.time() - imagefile.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    (tmp_path / "notes.tmp").write_bytes(b"not ours")  # only hayai's own hidden temporary files go
    save_image(_image(), tmp_path / "00002-3.png", infotext="x", hayai_meta={})
    assert sorted(os.listdir(tmp_path)) == [".00001-2.png.89abcdef.tmp", "00002-3.png", "notes.tmp"]


def test_concurrent_runs_with_one_seed_keep_every_image(tmp_path):
    """4 processes, same seed, same folder: every image is written under its own name, no run fails."""
    command = [sys.executable, "-m", "hayai", "generate", "a red circle", "--steps", "2", "--seed", "42", "-c", "2", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = [(proc.wait(timeout=240), *proc.communicate()) for proc in procs]
    for code, _, err in results:
        assert code == 0 and "Traceback" not in err, err
    images = sorted(p.name for p in outputs_dir().rglob("*") if p.is_file())
    assert len(images) == 8, images
    assert {name.split("-")[1].split(".")[0] for name in images} == {"42", "43"}  # the two seeds, 4 times each
    runs = Store().runs(kind="generate")
    assert [run.status for run in runs] == ["ok"] * 4
    assert sorted(path for run in runs for path in run.outputs) == sorted(str(p) for p in outputs_dir().rglob("*.png"))
