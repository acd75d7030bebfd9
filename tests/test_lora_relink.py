"""LoRAs an image names under a name this machine does not know are found by the image's "Lora hashes"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.lora import LoraNotFoundError, parse_lora_hashes, relink_loras
from hayai.lora.catalog import loras_dir
from hayai.lora.synthetic import random_kohya_lora, save_lora
from hayai.models.families import Family
from hayai.models.loading import load_pipeline, source_from_path


def test_parse_lora_hashes_reads_a1111_values():
    assert parse_lora_hashes("style: 0123456789ab, detail v2: ABCDEF012345") == {
        "style": "0123456789ab", "detail v2": "abcdef012345",
    }
    assert parse_lora_hashes(None) == {} and parse_lora_hashes("") == {} and parse_lora_hashes("nohash") == {}


class Catalog:
    """A fake `find_lora`: files by name, and by hash prefix when a hash is given."""

    def __init__(self, files: dict[str, str]):
        self.files = {name: Path(f"/loras/{name}.safetensors") for name in files}
        self.hashes = {short: self.files[name] for name, short in files.items()}

    def __call__(self, name: str, short_hash: str | None = None) -> Path:
        if name in self.files:
            return self.files[name]
        for full, path in self.hashes.items():
            if short_hash and full.startswith(short_hash):
                return path
        raise LoraNotFoundError(f"LoRA {name!r} is not a .safetensors path or a LoRA in the catalog")


def _request(prompt: str, loras=()) -> GenerationRequest:
    return GenerationRequest(prompt, loras=tuple(loras))


def test_relink_renames_tags_and_flags_found_by_hash_only():
    find = Catalog({"style-v2": "aaaaaaaaaaaa", "detail": "bbbbbbbbbbbb"})
    request = _request("a cat <lora:style:0.6> <lyco: old detail :te=0.5:unet=0.7> BREAK <lora:unknown:1>",
                       loras=["flagged:0.4:0.9"])
    hashes = {"style": "aaaaaaaaaaaa", "old detail": "bbbbbbbbbbbb", "unknown": "cccccccccccc", "flagged": "aaaaaaaaaaaa"}
    relinked, warnings = relink_loras(request, hashes, find)
    assert relinked.prompt == "a cat <lora:style-v2:0.6> <lyco: detail :te=0.5:unet=0.7> BREAK <lora:unknown:1>"
    assert relinked.loras == ("style-v2:0.4:0.9",)
    assert [w.split(";")[0] for w in warnings] == [
        "LoRA 'style' is not in the catalog under that name",
        "LoRA 'old detail' is not in the catalog under that name",
        "LoRA 'flagged' is not in the catalog under that name",
    ]
    assert "using /loras/style-v2.safetensors, whose hash aaaaaaaaaaaa the image records" in warnings[0]


def test_relink_leaves_known_names_and_names_without_a_hash_alone():
    find = Catalog({"style": "aaaaaaaaaaaa", "other": "bbbbbbbbbbbb"})
    request = _request("a cat <lora:style:0.6> <lora:missing:1>")
    relinked, warnings = relink_loras(request, {"style": "bbbbbbbbbbbb"}, find)  # found by name: the name wins
    assert relinked is request and warnings == []


# -- through the engine, with real files ----------------------------------------------------------


@pytest.fixture
def sd1_lora(tiny_folders) -> Path:
    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    return save_lora(random_kohya_lora(pipe, Family.SD1, seed=3, strength=2.0), loras_dir() / "style.safetensors")


def _pixels(result):
    return np.asarray(result.images[0].image)


def _generate(engine, tiny_folders, out: Path, **changes):
    return engine.generate(GenerationRequest(**{
        "prompt": "a red circle", "model": str(tiny_folders[Family.SD1]), "steps": 2, "seed": 8, "sampler": "Euler",
        "output_dir": str(out), **changes}))


@pytest.mark.parametrize("stored_hash", [None, "ABCDEF0123456789" * 4], ids=["data hash", "sshs_model_hash"])
def test_a_hayai_image_reproduces_after_its_lora_file_was_renamed(stored_hash, tiny_folders, tmp_path):
    """Found by the hash the infotext records: the one the header stores (kohya's sshs_model_hash), else the data's."""
    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    sd1_lora = save_lora(random_kohya_lora(pipe, Family.SD1, seed=3, strength=2.0), loras_dir() / "style.safetensors",
                         metadata={"sshs_model_hash": stored_hash} if stored_hash else None)
    engine = Engine(device="cpu")
    made = _generate(engine, tiny_folders, tmp_path / "a", loras=("style:0.6",))
    if stored_hash:
        assert made.loras[0]["short_hash"] == "ABCDEF012345"
    sd1_lora.rename(sd1_lora.with_name("style-renamed.safetensors"))
    again = engine.reproduce(made.images[0].path, output_dir=str(tmp_path / "b"))
    np.testing.assert_array_equal(_pixels(again), _pixels(made))
    assert again.loras[0]["name"] == "style-renamed" and again.loras[0]["short_hash"] == made.loras[0]["short_hash"]
    assert any("LoRA 'style' is not in the catalog under that name" in w for w in again.warnings)


def test_an_a1111_image_finds_a_lora_it_names_differently_by_hash(sd1_lora, tiny_folders, tmp_path):
    engine = Engine(device="cpu")
    direct = _generate(engine, tiny_folders, tmp_path / "a", prompt="a red circle <lora:style:0.6>")
    r = direct.request
    infotext = (f"a red circle <lora:their-style:0.6>\nSteps: 2, Sampler: Euler, Schedule type: Automatic, "
                f"CFG scale: {r.cfg_scale:g}, Seed: 8, Size: {r.width}x{r.height}, Model: {tiny_folders[Family.SD1]}, "
                f'Lora hashes: "their-style: {direct.loras[0]["short_hash"]}", Version: v1.10.1')
    info = PngInfo()
    info.add_text("parameters", infotext)  # as A1111 writes it
    theirs = tmp_path / "a1111.png"
    Image.new("RGB", (r.width, r.height)).save(theirs, pnginfo=info)
    again = engine.reproduce(theirs, output_dir=str(tmp_path / "b"))
    np.testing.assert_array_equal(_pixels(again), _pixels(direct))
    assert again.loras[0]["name"] == "style"
    assert again.request.prompt == "a red circle <lora:style:0.6>"

    sd1_lora.unlink()  # found by neither name nor hash: the engine's error names the image's LoRA
    with pytest.raises(LoraNotFoundError, match="their-style"):
        engine.reproduce(theirs, output_dir=str(tmp_path / "c"))
