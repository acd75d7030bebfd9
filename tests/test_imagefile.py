"""Saving images with their metadata and reading it back: PNG, JPEG, WebP; atomic; never overwriting."""

from __future__ import annotations

import json
import os
import re
import struct

import pytest
from PIL import ExifTags, Image, PngImagePlugin

from hayai.errors import HayaiError
from hayai.generation.imagefile import ImageMetadata, next_index, read_image_metadata, save_image, unique_path

INFOTEXT = (
    "猫, 桜の木の下, masterpiece\n"
    "Negative prompt: ぼやけ, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 64x48, "
    'Model: "my model, v2", Version: hayai 0.1.0'
)
HAYAI_META = {"request": {"prompt": "猫, 桜の木の下", "seed": 42, "cfg_scale": 7.5}, "plan": {"offload": None}, "note": "<&>"}


@pytest.fixture
def image() -> Image.Image:
    img = Image.new("RGB", (64, 48))
    img.putdata([(x * 4, y * 5, (x + y) % 256) for y in range(48) for x in range(64)])
    return img


@pytest.mark.parametrize(("suffix", "pil_format"), [(".png", "PNG"), (".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")])
def test_round_trip_infotext_and_hayai_json(tmp_path, image, suffix, pil_format):
    path = tmp_path / f"00000-42{suffix}"
    assert save_image(image, path, infotext=INFOTEXT, hayai_meta=HAYAI_META) == path
    assert read_image_metadata(path) == ImageMetadata(infotext=INFOTEXT, hayai=HAYAI_META)
    with Image.open(path) as saved:
        assert (saved.format, saved.size) == (pil_format, image.size)
        if pil_format == "PNG":
            assert list(saved.getdata()) == list(image.getdata())


def test_png_chunks_are_where_a1111_looks(tmp_path, image):
    latin = tmp_path / "latin.png"
    save_image(image, latin, infotext="a cat\nSteps: 1, Sampler: Euler, CFG scale: 7", hayai_meta={"a": 1})
    japanese = save_image(image, tmp_path / "ja.png", infotext=INFOTEXT, hayai_meta=HAYAI_META)
    with Image.open(latin) as png:
        assert png.text["parameters"] == "a cat\nSteps: 1, Sampler: Euler, CFG scale: 7"
        assert not isinstance(png.text["parameters"], PngImagePlugin.iTXt)  # tEXt, like A1111
        assert json.loads(png.text["hayai"]) == {"a": 1}
    with Image.open(japanese) as png:
        assert isinstance(png.text["parameters"], PngImagePlugin.iTXt)  # not latin-1: iTXt, like A1111
        assert png.text["parameters"] == INFOTEXT


def _exif_user_comment_entry(tiff: bytes) -> tuple[int, bytes]:
    """(field type, value) of UserComment, following the TIFF pointers of a raw EXIF block."""
    endian = {b"MM": ">", b"II": "<"}[tiff[:2]]

    def entries(offset: int):
        (count,) = struct.unpack_from(endian + "H", tiff, offset)
        for i in range(count):
            yield struct.unpack_from(endian + "HHII", tiff, offset + 2 + 12 * i)

    (ifd0,) = struct.unpack_from(endian + "I", tiff, 4)
    exif_ifd = next(value for tag, _, _, value in entries(ifd0) if tag == ExifTags.IFD.Exif)
    typ, count, offset = next((t, c, v) for tag, t, c, v in entries(exif_ifd) if tag == ExifTags.Base.UserComment)
    return typ, tiff[offset : offset + count]


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_exif_user_comment_as_a1111_writes_it(tmp_path, image, suffix):
    path = save_image(image, tmp_path / f"a{suffix}", infotext=INFOTEXT, hayai_meta=HAYAI_META)
    with Image.open(path) as saved:
        raw = saved.info["exif"]
    tiff = raw.removeprefix(b"Exif\x00\x00")
    assert tiff[:4] == b"MM\x00\x2a"  # big-endian, as piexif writes
    typ, value = _exif_user_comment_entry(tiff)
    assert typ == 7  # UNDEFINED, which piexif.helper.UserComment.load needs (Pillow would write BYTE)
    assert value == b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")


def test_reads_a_plain_a1111_png(tmp_path, image):
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", INFOTEXT)
    image.save(tmp_path / "a1111.png", pnginfo=pnginfo)
    assert read_image_metadata(tmp_path / "a1111.png") == ImageMetadata(infotext=INFOTEXT, hayai=None)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_image_without_metadata(tmp_path, image, suffix):
    image.save(tmp_path / f"plain{suffix}")
    assert read_image_metadata(tmp_path / f"plain{suffix}") == ImageMetadata(infotext=None, hayai=None)


def test_someone_elses_xmp_is_ignored(tmp_path, image):
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
    image.save(tmp_path / "other.jpg", xmp=xmp)
    assert read_image_metadata(tmp_path / "other.jpg") == ImageMetadata(infotext=None, hayai=None)


@pytest.mark.parametrize("name", ["missing.png", "garbage.png"])
def test_unreadable_file_names_the_path(tmp_path, name):
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    with pytest.raises(HayaiError, match=re.escape(str(tmp_path / name))):
        read_image_metadata(tmp_path / name)


def test_failed_encoding_leaves_nothing(tmp_path):
    rgba = Image.new("RGBA", (8, 8))
    with pytest.raises(OSError, match="RGBA"):  # JPEG has no alpha
        save_image(rgba, tmp_path / "a.jpg", infotext="x", hayai_meta={})
    assert os.listdir(tmp_path) == []


class _Interrupted:
    """An image whose encoding is interrupted half-way (Ctrl-C while writing)."""

    def save(self, file, **options):
        file.write(b"\x89PNG half of an image")
        raise KeyboardInterrupt


def test_interrupted_save_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        save_image(_Interrupted(), tmp_path / "a.png", infotext="x", hayai_meta={})
    assert os.listdir(tmp_path) == []


def test_success_leaves_only_the_image(tmp_path, image):
    save_image(image, tmp_path / "sub" / "00000-1.png", infotext="x", hayai_meta={})
    assert os.listdir(tmp_path / "sub") == ["00000-1.png"]


def test_refuses_to_overwrite(tmp_path, image):
    path = save_image(image, tmp_path / "a.png", infotext="first", hayai_meta={})
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="a.png"):
        save_image(image, path, infotext="second", hayai_meta={})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.png"]


def test_unsupported_suffix(tmp_path, image):
    with pytest.raises(HayaiError, match=r"a\.gif.*\.png, \.jpg, \.jpeg, \.webp"):
        save_image(image, tmp_path / "a.gif", infotext="x", hayai_meta={})


def test_next_index_follows_a1111_numbering(tmp_path):
    assert next_index(tmp_path / "missing") == 0
    assert next_index(tmp_path) == 0
    for name in ["00000-123.png", "00007-5.jpg", "00003.png", "notes.txt", "12abc.png", "image-00050.png", ".00099-x.png.tmp"]:
        (tmp_path / name).touch()
    assert next_index(tmp_path) == 8


def test_unique_path(tmp_path):
    path = tmp_path / "a.png"
    assert unique_path(path) == path
    path.touch()
    assert unique_path(path) == tmp_path / "a-1.png"
    (tmp_path / "a-1.png").touch()
    assert unique_path(path) == tmp_path / "a-2.png"


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_sd_parsers_reads_our_images(tmp_path, image, suffix):
    sd_parsers = pytest.importorskip("sd_parsers")
    path = save_image(image, tmp_path / f"a{suffix}", infotext=INFOTEXT, hayai_meta=HAYAI_META)
    info = sd_parsers.ParserManager().parse(path)
    assert info.full_prompt == "猫, 桜の木の下, masterpiece"
    assert info.full_negative_prompt == "ぼやけ, lowres"
    sampler = info.samplers[0]
    assert sampler.name == "DPM++ 2M"
    assert (sampler.parameters["seed"], sampler.parameters["steps"]) == ("42", "20")
