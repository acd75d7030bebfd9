"""Issue 16, the engine's side: an OOM while placing steps down like any other, and the step-down
frees the failed pipeline before it builds the next (on a GPU, both cannot fit at once)."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

import hayai.generation.engine as engine_module
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.models.families import Family


def _oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


def _request(tiny_folders, tmp_path, **overrides):
    return GenerationRequest(prompt="a green circle", model=str(tiny_folders[Family.SD1]), steps=2, seed=77,
                             width=64, height=64, output_dir=str(tmp_path), **overrides)


def _failing_placements(monkeypatch, failures: int) -> list[str]:
    """apply_strategy raises out of memory `failures` times, then places; returns the strategies tried."""
    tried = []
    real = engine_module.apply_strategy

    def apply(pipe, strategy):
        tried.append(strategy.name)
        if len(tried) <= failures:
            raise _oom()
        return real(pipe, strategy)

    monkeypatch.setattr(engine_module, "apply_strategy", apply)
    return tried


def test_oom_while_placing_steps_down(tiny_folders, tmp_path, monkeypatch):
    expected = np.asarray(Engine(device="cpu").generate(_request(tiny_folders, tmp_path / "a")).images[0].image)
    tried = _failing_placements(monkeypatch, 1)
    result = Engine(device="cpu").generate(_request(tiny_folders, tmp_path / "b"))
    assert tried == ["cpu-float32", "cpu-float32+vae-tiling"]
    assert result.events == [{"event": "out_of_memory", "phase": "placement", "strategy": "cpu-float32",
                              "next": "cpu-float32+vae-tiling"}]
    assert result.strategy == "cpu-float32+vae-tiling"
    np.testing.assert_array_equal(np.asarray(result.images[0].image), expected)


def test_oom_while_placing_the_step_downs_strategy_steps_down_again(tiny_folders, tmp_path, monkeypatch):
    engine = Engine(device="cpu")
    loaded = engine.load(str(tiny_folders[Family.SD1]))
    real = engine_module.apply_strategy
    calls = []

    def apply(pipe, strategy):  # the first placement works and its run fails; the step-down's placement fails
        calls.append(strategy.name)
        placed = real(pipe, strategy)
        if len(calls) == 1:
            handle = pipe.unet.register_forward_pre_hook(lambda *_: (handle.remove(), (_ for _ in ()).throw(_oom())))
        elif len(calls) == 2:
            raise _oom()
        return placed

    monkeypatch.setattr(engine_module, "apply_strategy", apply)
    result = engine.generate(_request(tiny_folders, tmp_path))
    assert [(e["phase"], e["strategy"]) for e in result.events] == [("denoise", "cpu-float32"),
                                                                    ("placement", "cpu-float32+vae-tiling")]
    assert result.strategy == "cpu-float32+vae-tiling+split" and loaded.strategy.name == result.strategy


def test_oom_while_placing_the_leanest_strategy_is_a_clear_error(tiny_folders, tmp_path, monkeypatch):
    from hayai.errors import HayaiError

    _failing_placements(monkeypatch, 1)
    engine = Engine(device="cpu", strategy="cpu-float32+vae-tiling+split")
    with pytest.raises(HayaiError, match="out of memory during placement even with the leanest strategy"):
        engine.generate(_request(tiny_folders, tmp_path))


def test_step_down_frees_the_failed_pipeline_before_building_the_next(tiny_folders, tmp_path, monkeypatch):
    engine = Engine(device="cpu")
    loaded = engine.load(str(tiny_folders[Family.SD1]))
    engine.generate(_request(tiny_folders, tmp_path / "warm", loras=()))  # placed once, LoRA set in use
    old = weakref.ref(loaded.pipe.unet)
    alive_when_building = []
    real_load = engine._load_pipe

    def load_pipe(source, strategy=None):
        import gc

        gc.collect()
        alive_when_building.append(old() is not None)
        return real_load(source, strategy)

    monkeypatch.setattr(engine, "_load_pipe", load_pipe)
    handle = loaded.pipe.unet.register_forward_pre_hook(lambda *_: (handle.remove(), (_ for _ in ()).throw(_oom())))
    result = engine.generate(_request(tiny_folders, tmp_path / "b"))
    assert result.events[0]["phase"] == "denoise"
    assert alive_when_building == [False]
    assert old() is None and loaded.loras.pipe is loaded.pipe
