"""Issue 16, placement: each component goes straight where the plan keeps it, fp8 is cast before it moves,
a split batch survives model offload's re-hooking, and te_cpu works with a half-precision denoiser.

The "accelerator" is the meta device (moves are free and bytes there are counted from shapes and dtypes)
or the CPU itself (`onload_device='cpu'`), in bfloat16 as on a GPU."""

from __future__ import annotations

import pytest
import torch

from hayai.generation.execute import run_batch
from hayai.generation.request import GenerationRequest
from hayai.generation.timing import PhaseTimer
from hayai.memory.apply import apply_strategy
from hayai.memory.strategies import Strategy
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline

_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


def _tensors(module):
    return [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]


def _bytes_on(module, device: str) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(module) if t.device.type == device)


class _DeviceBytes:
    """Bytes of each pipeline component on the meta "accelerator" after every module move."""

    def __init__(self, pipe, monkeypatch):
        self.components = {k: m for k, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        self.after_moves: list[dict[str, int]] = []
        real_to = torch.nn.Module.to

        def to(module, *args, **kwargs):
            moved = real_to(module, *args, **kwargs)
            self.after_moves.append({k: _bytes_on(m, "meta") for k, m in self.components.items()})
            return moved

        monkeypatch.setattr(torch.nn.Module, "to", to)

    @property
    def peak(self) -> int:
        return max(sum(reading.values()) for reading in self.after_moves)

    def now(self) -> dict[str, int]:
        return {k: _bytes_on(m, "meta") for k, m in self.components.items()}


def _record_streaming(monkeypatch) -> list:
    """diffusers' group offloading cannot hook onto the meta device: record what would be streamed instead."""
    import diffusers.hooks

    streamed = []
    monkeypatch.setattr(diffusers.hooks, "apply_group_offloading",
                        lambda module, onload_device, **_: streamed.append((module, onload_device.type)))
    return streamed


@pytest.mark.parametrize("family", [Family.SD1, Family.SD3])
@pytest.mark.parametrize("placement", ["te_offload", "te_cpu"])
def test_text_encoders_never_reach_the_device_when_the_plan_keeps_them_on_the_host(family, placement, monkeypatch):
    pipe = build_tiny_pipeline(family)
    denoiser = "unet" if family == Family.SD1 else "transformer"
    expected = sum(2 * sum(t.numel() for t in _tensors(getattr(pipe, name))) for name in (denoiser, "vae"))
    counted = _DeviceBytes(pipe, monkeypatch)
    streamed = _record_streaming(monkeypatch)
    apply_strategy(pipe, Strategy(placement=placement, device="meta", dtype="bfloat16"))
    final = counted.now()
    names = [name for name in _ENCODERS if getattr(pipe, name, None) is not None]
    assert streamed == ([(getattr(pipe, name), "meta") for name in names] if placement == "te_offload" else [])
    assert all(reading.get(name, 0) == 0 for reading in counted.after_moves for name in _ENCODERS)
    assert counted.peak == sum(final.values()) == expected  # the plan's resident set: denoiser + VAE in bf16


def test_fp8_storage_is_cast_on_the_host_before_the_denoiser_moves(monkeypatch):
    pipe = build_tiny_pipeline(Family.SD1)
    bf16_unet = 2 * sum(t.numel() for t in _tensors(pipe.unet))
    counted = _DeviceBytes(pipe, monkeypatch)
    _record_streaming(monkeypatch)
    apply_strategy(pipe, Strategy(placement="te_offload", device="meta", dtype="bfloat16", fp8_storage=True))
    final = counted.now()
    assert final["unet"] < 0.75 * bf16_unet  # stored in float8 (norms and embeddings stay in bf16)
    assert max(reading["unet"] for reading in counted.after_moves) == final["unet"]
    assert counted.peak == sum(final.values())


def _resolved(family, **overrides):
    request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=3, **overrides)
    return request.resolve(family, (64, 64))


def _run(pipe, family, request, encode_on=None):
    return run_batch(pipe, family, request, [3] * request.batch_size, timer=PhaseTimer(), emit=lambda e: None, batch=0,
                     total_steps=request.steps, encode_on=encode_on)


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL, Family.SD3])
def test_te_cpu_with_a_bf16_denoiser_runs(family):
    pipe = build_tiny_pipeline(family)
    apply_strategy(pipe, Strategy(placement="te_cpu", device="cpu", dtype="bfloat16"))
    assert pipe.text_encoder.dtype == torch.float32
    denoiser = pipe.unet if family != Family.SD3 else pipe.transformer
    seen = []
    denoiser.register_forward_pre_hook(lambda _m, args, kwargs: seen.append(
        (args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))).dtype), with_kwargs=True)
    images = _run(pipe, family, _resolved(family), encode_on="cpu")
    assert images[0].size == (64, 64) and set(seen) == {torch.bfloat16}


def test_split_batch_survives_model_offload_across_calls():
    pipe = build_tiny_pipeline(Family.SD1)
    apply_strategy(pipe, Strategy(placement="model_offload", device="cpu", dtype="float32", split_batch=True))
    batches = []
    # inside the UNet: what one (split) forward works on
    pipe.unet.conv_in.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    request = _resolved(Family.SD1)  # with CFG: 2 latents per step
    for call in (1, 2):
        before = len(batches)
        _run(pipe, Family.SD1, request)
        assert set(batches[before:]) == {1}, f"call {call}: the UNet saw batches {batches[before:]}"
