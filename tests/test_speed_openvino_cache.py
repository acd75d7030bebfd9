"""The OpenVINO cache kept under its cap: the least recently used conversions go first after a new one is saved,
never the new one or one in use; the cap comes from $HAYAI_OPENVINO_CACHE_GB. Conversions here are fake folders
of a few bytes (and, where a compile is needed, a one-operation OpenVINO graph): nothing converts a UNet."""

from __future__ import annotations

import json

import pytest

from hayai.errors import RequestError
from hayai.models.families import Family
from hayai.speed import openvino, openvino_cache
from hayai.speed.openvino_cache import CAP_VARIABLE, GIB


def _entry(model_hash, width=64, last_used="2020-01-01T00:00:00Z", payload=1000, xml=b"<net/>"):
    """A conversion folder as `convert` leaves one, with `payload` bytes of weights."""
    folder = openvino.cache_folder(model_hash, width, width)
    folder.mkdir(parents=True)
    (folder / "unet.xml").write_bytes(xml)
    (folder / "unet.bin").write_bytes(b"\0" * payload)
    (folder / "conversion.json").write_text(json.dumps({"seconds": 30.0, "converted_at": "2020-01-01T00:00:00Z",
                                                        "last_used": last_used}))
    return folder


def _names(entries):
    return [e.folder.name for e in entries]


def test_the_cap_is_16_gib_unless_the_variable_says_otherwise_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv(CAP_VARIABLE, raising=False)
    assert openvino_cache.cap_bytes() == 16 * GIB
    monkeypatch.setenv(CAP_VARIABLE, "2.5")
    assert openvino_cache.cap_bytes() == 2.5 * GIB
    monkeypatch.setenv(CAP_VARIABLE, "0")  # keeps only the conversion in use
    assert openvino_cache.cap_bytes() == 0
    for bad in ("16GB", "-1", "nan", "inf"):
        monkeypatch.setenv(CAP_VARIABLE, bad)
        with pytest.raises(RequestError) as error:
            openvino_cache.cap_bytes()
        assert str(error.value) == (f"HAYAI_OPENVINO_CACHE_GB={bad!r} is not a size in GiB; set a number of GiB, e.g. "
                                    "HAYAI_OPENVINO_CACHE_GB=16 (0 keeps only the conversion in use)")


def test_eviction_removes_the_least_recently_used_until_the_cap_holds():
    # named and converted in another order than they were used: only the last use counts
    _entry("a", last_used="2020-01-04T00:00:00Z")
    _entry("b", last_used="2020-01-02T00:00:00Z")
    _entry("c", last_used="2020-01-03T00:00:00Z")
    _entry("d", last_used="2020-01-01T00:00:00Z")
    before = openvino_cache.entries()
    assert _names(before) == ["d-64x64", "b-64x64", "c-64x64", "a-64x64"]
    size = before[0].bytes
    assert {e.bytes for e in before} == {size} and size > 1000

    removed = openvino_cache.evict(2.5 * size, keep=set())
    assert _names(removed) == ["d-64x64", "b-64x64"]
    assert not removed[0].folder.exists() and not removed[1].folder.exists()
    left = openvino_cache.entries()
    assert _names(left) == ["c-64x64", "a-64x64"] and sum(e.bytes for e in left) <= 2.5 * size
    assert openvino_cache.evict(2 * size, keep=set()) == []  # at the cap exactly: nothing more goes


def test_eviction_never_removes_what_it_is_told_to_keep_nor_a_conversion_under_way():
    oldest = _entry("old", last_used="2020-01-01T00:00:00Z")
    used = _entry("used", last_used="2020-01-02T00:00:00Z")
    _entry("other", last_used="2020-01-03T00:00:00Z")
    new = _entry("new", last_used="2020-01-04T00:00:00Z")
    partial = openvino.cache_folder("late", 64, 64).with_name("late-64x64.partial-123")
    partial.mkdir()
    (partial / "unet.bin").write_bytes(b"\0" * 5000)

    removed = openvino_cache.evict(0, keep={new, oldest, used})  # a cap nothing fits under
    assert _names(removed) == ["other-64x64"]
    assert oldest.is_dir() and used.is_dir() and new.is_dir() and partial.is_dir()
    listed = openvino_cache.entries()
    assert listed[-1].unfinished and listed[-1].model_hash == "late" and listed[-1].bytes == 5000


def test_a_use_is_recorded_in_the_record_replaced_whole():
    first = _entry("a", last_used="2020-01-01T00:00:00Z")
    _entry("b", last_used="2020-01-02T00:00:00Z")
    openvino_cache.touch(first)
    record = json.loads((first / "conversion.json").read_text())
    assert record["last_used"] > "2020-01-02T00:00:00Z" and record["seconds"] == 30.0  # the rest kept
    assert sorted(p.name for p in first.iterdir()) == ["conversion.json", "unet.bin", "unet.xml"]  # no temp file left
    assert _names(openvino_cache.entries()) == ["b-64x64", "a-64x64"]  # now the most recently used


def test_an_old_record_without_a_last_use_counts_its_conversion_as_one():
    folder = _entry("a", last_used="2020-01-03T00:00:00Z")
    older = _entry("b")
    record = json.loads((older / "conversion.json").read_text())
    del record["last_used"]
    (older / "conversion.json").write_text(json.dumps(record))
    assert openvino_cache.entries()[0].last_used == "2020-01-01T00:00:00Z"
    assert _names(openvino_cache.evict(0, keep={folder})) == ["b-64x64"]


# -- attach: evicting after a conversion (a one-operation OpenVINO graph stands in for a converted UNet) ---------


class _FakeUNet:
    def forward(self, *args, **kwargs):
        return "torch"


def _graph(folder) -> bytes:
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    sample = ops.parameter([-1, 4], np.float32, name="sample")
    ov.save_model(ov.Model([ops.relu(sample)], [sample], "stand-in"), folder / "graph.xml")
    return (folder / "graph.xml").read_bytes()


def _last_used(folder, when):
    record = json.loads((folder / "conversion.json").read_text())
    (folder / "conversion.json").write_text(json.dumps({**record, "last_used": when}))


def test_attach_evicts_the_least_recently_used_after_a_conversion_and_says_so(monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    graph = _graph(tmp_path)
    converted = []

    def fake_convert(unet, family, model_hash, width, height, *, vae_scale=8):
        converted.append(model_hash)
        _entry(model_hash, width, last_used=openvino_cache.now(), xml=graph)
        return {"seconds": 1.0}

    monkeypatch.setattr(openvino, "convert", fake_convert)
    in_use = _entry("used", xml=graph)
    gone_first = _entry("a", last_used="2020-01-02T00:00:00Z", xml=graph)
    gone_second = _entry("b", last_used="2020-01-03T00:00:00Z", xml=graph)
    kept = _entry("c", last_used="2020-01-04T00:00:00Z", xml=graph)
    size = openvino_cache.entries()[0].bytes
    assert {e.bytes for e in openvino_cache.entries()} == {size}
    monkeypatch.setenv(CAP_VARIABLE, repr(3 * size / GIB))  # room for three of these

    running = _FakeUNet()
    loaded = openvino.attach(running, Family.SD1, "used", 64, 64, threads=1)  # cached: loaded, nothing converted
    assert converted == [] and "evicted" not in loaded and loaded["converted_seconds"] is None
    assert json.loads((in_use / "conversion.json").read_text())["last_used"] > "2020-01-04"  # its use recorded
    assert openvino.in_use() == {in_use}
    _last_used(in_use, "2020-01-01T00:00:00Z")  # the least recently used again, but running here

    other = _FakeUNet()
    event = openvino.attach(other, Family.SD1, "new", 64, 64, threads=1)
    new = openvino.cache_folder("new", 64, 64)
    assert converted == ["new"] and event["cache"] == str(new)
    assert event["evicted"] == [{"folder": str(gone_first), "bytes": size}, {"folder": str(gone_second), "bytes": size}]
    assert in_use.is_dir() and new.is_dir() and kept.is_dir()
    assert not gone_first.exists() and not gone_second.exists()
    assert openvino_cache.eviction_warning(event) == (
        f"the OpenVINO cache went over its cap of {3 * size / GIB:g} GiB (HAYAI_OPENVINO_CACHE_GB): removed the least "
        f"recently used conversion(s) {gone_first} (0.0 GiB), {gone_second} (0.0 GiB), 0.0 GiB freed; they are "
        "converted again when a run needs them")

    openvino.detach(running)  # no longer in use: the next conversion may take it
    assert openvino.in_use() == {new}
    third = openvino.attach(_FakeUNet(), Family.SD1, "newer", 64, 64, threads=1)
    assert third["evicted"] == [{"folder": str(in_use), "bytes": size}] and kept.is_dir() and new.is_dir()


def test_a_bad_cap_fails_before_anything_is_converted(monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(openvino, "convert", lambda *args, **kwargs: pytest.fail("converted"))
    monkeypatch.setenv(CAP_VARIABLE, "16GB")
    with pytest.raises(RequestError, match=r"HAYAI_OPENVINO_CACHE_GB='16GB' is not a size in GiB"):
        openvino.attach(_FakeUNet(), Family.SD1, "h", 64, 64, threads=1)


# -- `hayai models cache` -------------------------------------------------------------------------------------------


def _cache_with_two_models():
    from hayai import paths
    from hayai.models.catalog import PLACEHOLDER_NAME
    from hayai.store import Store

    known, unknown = "a" * 64, "b" * 64
    _entry(known, 64, last_used="2020-01-03T04:05:06Z")
    _entry(known, 128, payload=3000)
    _entry(unknown, 64, last_used="2020-01-02T00:00:00Z")
    with Store() as store:  # the history knows a model by its hash; the newest run's name is the one shown
        for name in ("old-name", "my-model"):
            store.start_run("generate", request={}, model=name, model_hash=known, device="cpu")
    placeholder = paths.cache_dir() / PLACEHOLDER_NAME
    placeholder.mkdir()
    (placeholder / "model_index.json").write_text("{}")
    return known, unknown, placeholder


def test_models_cache_lists_the_conversions_with_their_model_size_and_dates():
    from inprocess import hayai

    assert hayai("models", "cache").stdout.startswith("nothing in ")
    known, unknown, placeholder = _cache_with_two_models()
    listed = json.loads(hayai("models", "cache", "--json").stdout)
    openvino_part = listed["openvino"]
    rows = [(c["name"], c["model_hash"], c["width"], c["last_used"]) for c in openvino_part["conversions"]]
    assert rows == [("my-model", known, 128, "2020-01-01T00:00:00Z"), (None, unknown, 64, "2020-01-02T00:00:00Z"),
                    ("my-model", known, 64, "2020-01-03T04:05:06Z")]  # least recently used first
    sizes = [c["bytes"] for c in openvino_part["conversions"]]
    assert sizes[0] == sizes[1] + 2000 and openvino_part["bytes"] == sum(sizes)
    assert openvino_part["cap_bytes"] == 16 * GIB and listed["other"][0]["folder"] == str(placeholder)
    assert listed["total_bytes"] == sum(sizes) + 2  # + the placeholder's "{}"

    text = hayai("models", "cache").stdout
    assert f"my-model  {known[:12]}  64x64" in text and "2020-01-01 00:00  2020-01-03 04:05" in text
    assert f"?         {unknown[:12]}  64x64" in text and known[:13] not in text
    assert "cap 16.0 GiB, $HAYAI_OPENVINO_CACHE_GB" in text and "placeholder model" in text
    assert "`hayai models cache --clear-openvino` removes the OpenVINO conversions" in text


def test_models_cache_reports_a_bad_cap_instead_of_failing(monkeypatch):
    from inprocess import hayai

    _entry("h")
    monkeypatch.setenv(CAP_VARIABLE, "lots")
    listed = json.loads(hayai("models", "cache", "--json").stdout)
    assert listed["openvino"]["cap_bytes"] is None
    assert listed["openvino"]["cap_problem"].startswith("HAYAI_OPENVINO_CACHE_GB='lots' is not a size in GiB")


def test_clear_openvino_removes_every_conversion_and_says_what_it_freed():
    from inprocess import hayai

    _, _, placeholder = _cache_with_two_models()
    partial = openvino_cache.root() / "c-64x64.partial-99"
    partial.mkdir()
    (partial / "unet.bin").write_bytes(b"\0" * 100)
    total = sum(e.bytes for e in openvino_cache.entries())
    cleared = json.loads(hayai("models", "cache", "--clear-openvino", "--json").stdout)
    assert len(cleared["removed"]) == 4 and cleared["freed_bytes"] == total
    assert openvino_cache.entries() == [] and not partial.exists() and placeholder.is_dir()  # only OpenVINO's
    assert hayai("models", "cache", "--clear-openvino").stdout.strip() == f"no OpenVINO conversions in {openvino_cache.root()}"

    _entry("d")
    size = openvino_cache.entries()[0].bytes
    assert hayai("models", "cache", "--clear-openvino").stdout.strip() == (
        f"removed 1 OpenVINO conversion(s) from {openvino_cache.root()}: {size / 1024:.1f} KiB freed")


def test_a_models_conversion_time_outlives_its_folders():
    """The pay-back rule needs what converting again would cost after an eviction or a clear removed every size."""
    assert openvino.conversion_seconds("m") is None
    _entry("m")  # its record says 30 s
    assert openvino.conversion_seconds("m") == 30.0
    openvino_cache.remember_conversion("m", 30.0)  # what `convert` does beside writing the record
    openvino_cache.clear()
    assert openvino_cache.entries() == [] and openvino.conversion_seconds("m") == 30.0
    assert openvino.conversion_seconds("other") is None
