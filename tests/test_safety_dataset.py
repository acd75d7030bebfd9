"""A decompression bomb in a dataset (a small file that decodes to gigabytes) is skipped and reported, never a crash."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from hayai.cli.main import app
from hayai.errors import HayaiError
from hayai.training.data import Example, load_pixels

SIDE = 30_000  # 900 million pixels: over twice Pillow's MAX_IMAGE_PIXELS, so Image.open raises DecompressionBombError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path):
    """A 30000x30000 1-bit greyscale PNG of about 100 KB, written row by row (never held in memory)."""
    packer, row = zlib.compressobj(9), b"\0" * (1 + SIDE // 8)  # filter byte + 3750 bytes of black pixels
    data = b"".join(packer.compress(row) for _ in range(SIDE)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 1, 0, 0, 0, 0))
                     + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "pictures"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (256, 256), (80 * i, 40, 200)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"zqx, picture {i}")
    write_bomb(root / "bomb.png")
    (root / "bomb.txt").write_text("zqx, a bomb")
    return root


def test_dataset_check_reports_a_decompression_bomb(dataset):
    assert (dataset / "bomb.png").stat().st_size < 200_000
    result = CliRunner().invoke(app, ["dataset", "check", str(dataset), "--json"])
    assert result.exit_code == 0 and result.exception is None, result.output
    report = json.loads(result.output)
    assert (report["images"], report["usable"]) == (4, 3)
    (unreadable,) = [f for f in report["findings"] if f["code"] == "unreadable_image"]
    assert unreadable["paths"] == ["bomb.png"]


def test_dataset_prepare_skips_a_decompression_bomb(dataset, tmp_path):
    result = CliRunner().invoke(app, ["dataset", "prepare", str(dataset), str(tmp_path / "prepared"), "--resolution", "64"])
    assert result.exit_code == 0 and result.exception is None, result.output
    manifest = json.loads(next((tmp_path / "prepared").glob("*.json")).read_text())
    assert len(manifest["items"]) == 3 and "bomb.png" in json.dumps(manifest["skipped"])


def test_a_bomb_among_prepared_images_is_a_one_line_error(tmp_path):
    example = Example(0, write_bomb(tmp_path / "0.png"), "zqx", 64, 64, (64, 64), (0, 0))
    with pytest.raises(HayaiError, match=r"0\.png cannot be read \(DecompressionBombError.*prepare it again"):
        load_pixels(example)
