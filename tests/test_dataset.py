"""The dataset doctor (scan + findings) and dataset preparation (buckets, crops, split, manifest)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hayai.dataset import check_dataset, load_manifest, prepare_dataset, scan_dataset
from hayai.dataset.check import caption_tags
from hayai.dataset.prepare import choose_bucket, crop_box, make_buckets, split_items
from hayai.demo.shapes import samples
from hayai.errors import RequestError


@pytest.fixture
def messy(tmp_path):
    """A dataset with one of every problem: 24 shapes images (a kohya 10_zqx folder, a metadata.jsonl folder),
    an exact copy, a resized JPEG copy, a corrupt file, a missing and an empty caption, a greyscale and a tiny
    image, a 2:1 image, a caption without an image."""
    root = tmp_path / "pictures"
    (root / "10_zqx").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = []
    for i, (_, caption, image) in enumerate(samples(11, 24)):
        image = image.resize((256, 256), Image.Resampling.NEAREST)
        if i < 12:
            image.save(root / "10_zqx" / f"{i:02d}.png")
            if i != 3:
                (root / "10_zqx" / f"{i:02d}.txt").write_text("zqx, " + caption)
        else:
            image.save(root / "meta" / f"{i:02d}.png")
            rows.append({"file_name": f"{i:02d}.png", "text": caption})
    (root / "meta" / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    Image.open(root / "10_zqx" / "00.png").save(root / "copy.png")
    Image.open(root / "10_zqx" / "01.png").resize((300, 300)).save(root / "near.jpg", quality=85)
    (root / "copy.txt").write_text("zqx")
    (root / "near.txt").write_text("zqx")
    (root / "empty.png").write_bytes((root / "meta" / "12.png").read_bytes())
    (root / "empty.txt").write_text("  ")
    Image.new("L", (256, 256), 90).save(root / "grey.png")
    (root / "grey.txt").write_text("zqx, a grey picture")
    Image.new("RGB", (40, 40), (200, 10, 10)).save(root / "tiny.png")
    (root / "tiny.txt").write_text("zqx, red")
    Image.new("RGB", (512, 256), (10, 200, 10)).save(root / "wide.png")
    (root / "wide.txt").write_text("zqx, green")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "lonely.txt").write_text("no image")
    return root


def test_doctor_reports_every_problem_and_writes_nothing(messy):
    before = sorted((p.relative_to(messy), p.stat().st_mtime_ns) for p in messy.rglob("*"))
    scan = scan_dataset(messy)
    report = check_dataset(scan, resolution=512, trigger_word="zqx")
    assert sorted((p.relative_to(messy), p.stat().st_mtime_ns) for p in messy.rglob("*")) == before

    assert (report.images, report.usable) == (31, 30)
    assert report.folders["10_zqx"] == {"images": 12, "repeats": 10, "class": "zqx"}
    assert report.captions == {"txt": 17, "metadata": 12, "missing": 1, "empty": 1}  # the empty one is a .txt
    assert report.aspect_ratios == {"1:1": 29, "2:1": 1}
    found = {f.code: f for f in report.findings}
    assert found["unreadable_image"].paths == ("broken.jpg",) and found["unreadable_image"].level == "warning"
    assert found["missing_caption"].paths == ("10_zqx/03.png",) and "'zqx'" in found["missing_caption"].message
    assert found["empty_caption"].paths == ("empty.png",)
    assert report.exact_duplicates == [["10_zqx/00.png", "copy.png"], ["empty.png", "meta/12.png"]]
    assert report.near_duplicates == [["10_zqx/01.png", "near.jpg"]]
    assert set(found["tiny_image"].paths) >= {"tiny.png"}  # under half of 512 on a side
    assert found["mixed_colour"].paths == ("grey.png",)
    assert found["orphan_captions"].paths == ("lonely.txt",)
    assert found["trigger_missing"].level == "info" and len(found["trigger_missing"].paths) == 12  # the metadata ones
    assert "few_images" not in found and "many_images" not in found  # 27 distinct pictures: within seed 002's 20-50
    assert not report.errors


def test_seed_advice_on_dataset_size(tmp_path):
    root = tmp_path / "few"
    root.mkdir()
    for i, (_, caption, image) in enumerate(samples(5, 6)):
        image.save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(caption)
    found = {f.code: f for f in check_dataset(scan_dataset(root), resolution=64).findings}
    assert found["few_images"].level == "warning" and "20-50" in found["few_images"].message
    assert check_dataset(scan_dataset(tmp_path / "few"), resolution=64).errors == []
    (tmp_path / "none").mkdir()
    assert [f.code for f in check_dataset(scan_dataset(tmp_path / "none")).errors] == ["no_images"]


def test_tags_are_comma_separated_or_words():
    assert caption_tags(["zqx, red hair, smile", "zqx, blue hair"]) == [["zqx", "red hair", "smile"], ["zqx", "blue hair"]]
    assert caption_tags(["a small red circle on a white background"]) == [["small", "red", "circle", "white", "background"]]


def test_buckets_follow_kohya():
    buckets = make_buckets(512, 64)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert choose_bucket(1024, 768, buckets) == (576, 448)  # 4:3 -> the nearest ratio, 1.29
    assert choose_bucket(300, 300, buckets) == (512, 512)
    assert crop_box(1024, 768, (576, 448)) == ((597, 448), (10, 0))
    with pytest.raises(RequestError, match="multiple of 64"):
        make_buckets(500, 64)


def test_prepare_crops_into_buckets_splits_and_reuses(messy, tmp_path):
    scan = scan_dataset(messy)
    manifest = prepare_dataset(scan, tmp_path / "prepared", resolution=256, bucket_step=64, validation_fraction=0.1,
                               seed=3, trigger_word="zqx")
    assert [s["source"] for s in manifest.skipped] == ["broken.jpg"]
    assert len(manifest.items) == 30 and len(manifest.split("validation")) == 3
    by_source = {item.source: item for item in manifest.items}
    assert (by_source["wide.png"].width, by_source["wide.png"].height) == (320, 192)  # 2:1 -> the nearest bucket (5:3)
    assert Image.open(manifest.folder / by_source["wide.png"].file).size == (320, 192)
    assert by_source["meta/13.png"].caption.startswith("zqx, a ")  # trigger word put in front
    assert by_source["10_zqx/03.png"].caption == "zqx" and by_source["10_zqx/03.png"].note == "no caption: trains with 'zqx'"
    assert by_source["10_zqx/05.png"].repeats == 10
    assert (manifest.folder / by_source["meta/13.png"].file).with_suffix(".txt").read_text() == by_source["meta/13.png"].caption
    copies = {by_source["10_zqx/00.png"].split, by_source["copy.png"].split}
    assert len(copies) == 1  # identical files never straddle the split
    again = prepare_dataset(scan, tmp_path / "prepared", resolution=256, bucket_step=64, validation_fraction=0.1, seed=3,
                            trigger_word="zqx")
    assert again.key == manifest.key and load_manifest(tmp_path / "prepared").items == manifest.items
    with pytest.raises(RequestError, match="inside the source folder"):
        prepare_dataset(scan, messy / "out", resolution=256)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.docx").write_text("mine")
    with pytest.raises(RequestError, match="not a prepared dataset"):
        prepare_dataset(scan, tmp_path / "busy", resolution=256)


def test_split_is_deterministic_and_never_takes_everything():
    scan_images = [type("I", (), {"relative": f"{i}.png", "sha256": str(i)})() for i in range(10)]
    held = split_items(scan_images, 0.2, seed=1)
    assert held == split_items(scan_images, 0.2, seed=1) and len(held) == 2
    assert held != split_items(scan_images, 0.2, seed=2)
    assert split_items(scan_images[:3], 0.5, seed=1) == set()  # too few to hold any out
    with pytest.raises(RequestError, match="validation_fraction=1.0"):
        split_items(scan_images, 1.0, seed=1)


def test_shapes_of_other_colours_are_not_near_duplicates_and_small_models_want_small_images(tmp_path):
    """The demo's world: a small purple triangle and a small blue square in the same corner of a grey field
    hash alike and differ little on average; and 64 px pictures are right for a 64 px model."""
    for i, (_, caption, image) in enumerate(samples(9, 30)):
        image.save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(caption)
    report = check_dataset(scan_dataset(tmp_path), resolution=64)
    codes = {f.code for f in report.findings}
    assert report.near_duplicates == [] and "near_duplicates" not in codes and "tiny_image" not in codes


def test_dataset_check_measures_sizes_against_the_default_models_own(tmp_path):
    """Without --resolution, `dataset check` measures against the model `train lora` would use (the
    built-in 64 px demo here), not a fixed 256 px."""
    from inprocess import hayai

    for i, (_, caption, image) in enumerate(samples(3, 4)):
        image.save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(caption)
    report = json.loads(hayai("dataset", "check", tmp_path, "--json").stdout)
    assert "tiny_image" not in {f["code"] for f in report["findings"]}
    small = json.loads(hayai("dataset", "check", tmp_path, "-m", "arch:sd15", "--json").stdout)
    assert "tiny_image" in {f["code"] for f in small["findings"]}  # 64 px pictures for a 512 px model
