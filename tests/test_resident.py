"""The engine's resident models: switching back reuses a model, eviction by bytes (least recently used
first), budget 0 keeps one, a cached model gives a fresh engine's pixels, and the listing."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest

from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.generation.resident import expected_bytes, weights_bytes
from hayai.memory.apply import return_to_host
from hayai.memory.strategies import Strategy
from hayai.models.families import Family
from hayai.models.loading import source_from_path
from hayai.models.tiny import save_tiny_pipeline


@pytest.fixture(scope="module")
def three_sd1(tmp_path_factory) -> list[str]:
    """Three tiny SD1 models of the same size and different weights."""
    root = tmp_path_factory.mktemp("resident")
    return [str(save_tiny_pipeline(Family.SD1, root / f"sd1-seed{seed}", seed=seed)) for seed in range(3)]


@pytest.fixture(scope="module")
def sd1_bytes(three_sd1) -> int:
    from hayai.models.loading import load_pipeline

    return weights_bytes(load_pipeline(source_from_path(three_sd1[0])))


class LoadCounter:
    """Counts the loads an engine really does, from its progress events."""

    def __init__(self):
        self.loads: list[str] = []

    def __call__(self, event):
        if event.phase == "load" and event.done == 0:
            self.loads.append(event.detail)


def _request(model: str, tmp_path, **changes) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red circle", "model": model, "steps": 2, "seed": 3, "sampler": "Euler",
                                "width": 64, "height": 64, "output_dir": str(tmp_path), **changes})


def _names(engine: Engine) -> list[str]:
    return [entry["path"] for entry in engine.resident()]


def test_switching_back_reuses_the_model_without_a_load(three_sd1, tmp_path):
    a, b, _ = three_sd1
    engine, counter = Engine(device="cpu"), LoadCounter()
    engine.generate(_request(a, tmp_path), progress=counter)
    pipe_a = engine.load(a).pipe
    engine.generate(_request(b, tmp_path), progress=counter)
    engine.generate(_request(a, tmp_path), progress=counter)
    assert len(counter.loads) == 2  # A and B once each
    assert engine.load(a).pipe is pipe_a
    assert _names(engine) == [a, b]


def test_expected_bytes_are_the_loaded_bytes(three_sd1, sd1_bytes):
    expected = expected_bytes(source_from_path(three_sd1[0]), "float32")  # from the configs, before a load
    assert 0 < sd1_bytes - expected < 0.001 * sd1_bytes  # all but the integer buffers (CLIP's position ids)
    engine = Engine(device="cpu")
    engine.load(three_sd1[0])
    assert engine.resident()[0]["bytes"] == sd1_bytes


def test_least_recently_used_is_evicted_to_fit_the_budget(three_sd1, sd1_bytes):
    a, b, c = three_sd1
    engine = Engine(device="cpu", resident_bytes=2 * sd1_bytes + sd1_bytes // 2)  # room for two
    first_a = engine.load(a)
    first_b = engine.load(b)
    b_unet = weakref.ref(first_b.pipe.unet)
    engine.load(a)  # A is now more recently used than B
    engine.load(c)
    assert _names(engine) == [c, a]
    assert first_b.pipe is None and first_b.loras is None
    gc.collect()
    assert b_unet() is None  # nothing else holds the evicted weights
    assert engine.load(a) is first_a and first_a.pipe is not None
    assert engine._resident.used_bytes == 2 * sd1_bytes


def test_budget_zero_keeps_only_the_active_model(three_sd1, tmp_path):
    a, b, _ = three_sd1
    engine, counter = Engine(device="cpu", resident_bytes=0), LoadCounter()
    engine.generate(_request(a, tmp_path), progress=counter)
    engine.generate(_request(b, tmp_path), progress=counter)
    engine.generate(_request(a, tmp_path), progress=counter)
    assert len(counter.loads) == 3  # each switch loads anew, as with one resident model
    assert _names(engine) == [a]
    assert engine.resident()[0]["active"]


def test_budget_zero_frees_the_old_model_before_loading_the_next(three_sd1, monkeypatch):
    a, b, _ = three_sd1
    engine = Engine(device="cpu", resident_bytes=0)
    a_unet = weakref.ref(engine.load(a).pipe.unet)
    alive_when_loading, real_load = [], engine._load_pipe

    def load_pipe(source, strategy=None):
        gc.collect()
        alive_when_loading.append(a_unet() is not None)
        return real_load(source, strategy)

    monkeypatch.setattr(engine, "_load_pipe", load_pipe)
    engine.load(b)
    assert alive_when_loading == [False]  # B is built in the room A left


def test_a_cached_model_makes_a_fresh_engines_pixels(three_sd1, tmp_path, sd1_lora_for):
    a, b, _ = three_sd1
    lora = sd1_lora_for(a)
    engine = Engine(device="cpu")
    engine.generate(_request(a, tmp_path, loras=(f"{lora}:1.0",)))  # patched in place
    engine.generate(_request(b, tmp_path))
    cached = engine.generate(_request(a, tmp_path))  # back to A, LoRA removed
    cached_lora = engine.generate(_request(a, tmp_path, loras=(f"{lora}:0.5",)))
    fresh = Engine(device="cpu", resident_bytes=0).generate(_request(a, tmp_path))
    fresh_lora = Engine(device="cpu", resident_bytes=0).generate(_request(a, tmp_path, loras=(f"{lora}:0.5",)))
    np.testing.assert_array_equal(np.asarray(cached.images[0].image), np.asarray(fresh.images[0].image))
    np.testing.assert_array_equal(np.asarray(cached_lora.images[0].image), np.asarray(fresh_lora.images[0].image))
    assert not np.array_equal(np.asarray(cached.images[0].image), np.asarray(cached_lora.images[0].image))


@pytest.fixture
def sd1_lora_for():
    """A kohya LoRA for a tiny SD1 model, installed in hayai's LoRA folder as 'style'."""
    from hayai.lora.catalog import loras_dir
    from hayai.lora.synthetic import random_kohya_lora, save_lora
    from hayai.models.loading import load_pipeline

    def make(model: str) -> str:
        pipe = load_pipeline(source_from_path(model))
        save_lora(random_kohya_lora(pipe, Family.SD1, seed=3, strength=2.0), loras_dir() / "style.safetensors",
                  metadata={"ss_network_dim": "4"})
        return "style"

    return make


def test_listing_and_unload_all_spare_the_model_of_a_running_request(three_sd1, tmp_path, sd1_bytes):
    a, b, _ = three_sd1
    engine = Engine(device="cpu")
    engine.load(b)
    seen: dict = {}

    def during_the_run(event):
        if event.phase == "denoise" and not seen:  # from another thread, as the server's routes would
            worker = threading.Thread(target=lambda: seen.update(listing=engine.resident(), unloaded=engine.unload_all()))
            worker.start()
            worker.join()

    engine.generate(_request(a, tmp_path), progress=during_the_run)
    first, second = seen["listing"]
    assert (first["path"], first["active"], first["in_use"], first["bytes"]) == (a, True, True, sd1_bytes)
    assert first["strategy"] == "cpu-float32"
    assert (second["path"], second["active"], second["in_use"]) == (b, False, False)
    assert second["last_used"] <= first["last_used"]
    assert seen["unloaded"] == ["sd1-seed1"]  # B; A was running
    assert _names(engine) == [a] and not engine.resident()[0]["in_use"]
    assert engine.unload_all() == ["sd1-seed0"]  # idle: everything goes
    assert engine.resident() == []


def test_only_a_plain_placement_goes_back_to_the_host(three_sd1):
    pipe = Engine(device="cpu").load(three_sd1[0]).pipe
    plain = Strategy(placement="resident", device="cpu", dtype="float32")
    assert return_to_host(pipe, plain, "float32")
    assert return_to_host(pipe, Strategy(placement="te_cpu", device="cpu", dtype="float32"), "float16")  # fp32: exact
    assert not return_to_host(pipe, Strategy(placement="resident", device="cpu", dtype="float16"), "float32")  # lossy
    for switched in (Strategy(placement="resident", vae_tiling=True), Strategy(placement="resident", split_batch=True),
                     Strategy(placement="resident", fp8_storage=True), Strategy(placement="model_offload"),
                     Strategy(placement="group_offload"), Strategy(placement="sequential_offload")):
        assert not return_to_host(pipe, switched, "float16"), switched.name
