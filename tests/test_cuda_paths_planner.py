"""Issue 16, smaller findings: host RAM of streamed offload, the encoders' transfers, torch 2.4's OOM type,
text-encoder checkpointing that passes gradients."""

from __future__ import annotations

import pytest
import torch

from hayai.hardware import GIB, parse_device_spec
from hayai.memory import costs
from hayai.memory.facts import facts_for_architecture
from hayai.memory.planner import PlanRequest, estimate
from hayai.memory.strategies import Strategy


def _weights(facts, dtype="bfloat16"):
    return sum(costs.weight_bytes(c.params, dtype) for c in facts.components)


def test_group_offload_with_streams_counts_the_pinned_copy():
    facts = facts_for_architecture("sd35m")
    card = parse_device_spec("RTX 4060 8GB", host_ram_bytes=32 * GIB)
    group = estimate(facts, PlanRequest(1024, 1024), card, Strategy("group_offload", "cuda:0", "bfloat16"), 7 * GIB)
    assert group.host_bytes == 2 * _weights(facts)  # ~31 GiB: the weights and their pinned copies
    assert not group.fits and "host RAM" in group.note
    model = estimate(facts, PlanRequest(1024, 1024), card, Strategy("model_offload", "cuda:0", "bfloat16"), 7 * GIB)
    assert model.host_bytes == _weights(facts)  # accelerate's hooks keep one copy


def test_streamed_text_encoders_cross_the_link_per_prompt():
    facts = facts_for_architecture("sd35m")
    card = parse_device_spec("RTX 4060 8GB")
    strategy = Strategy("te_offload", "cuda:0", "bfloat16")
    with_cfg = estimate(facts, PlanRequest(1024, 1024, guidance=True), card, strategy, 7 * GIB)
    without = estimate(facts, PlanRequest(1024, 1024, guidance=False), card, strategy, 7 * GIB)
    te = sum(costs.weight_bytes(c.params, "bfloat16") for c in facts.by_role("text_encoder"))
    assert with_cfg.phase_seconds["transfer"] == pytest.approx(2 * costs.transfer_seconds(te, card.link_gbps))
    assert without.phase_seconds["transfer"] == pytest.approx(costs.transfer_seconds(te, card.link_gbps))


def test_out_of_memory_is_recognised_on_torch_2_4(monkeypatch):
    from hayai.memory.apply import is_out_of_memory

    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.delattr(torch, "OutOfMemoryError")  # torch 2.4 has only torch.cuda.OutOfMemoryError
    assert is_out_of_memory(error)
    assert not is_out_of_memory(ValueError("out of range"))


def test_text_encoder_checkpointing_is_not_reentrant(monkeypatch):
    from hayai.models.families import Family
    from hayai.models.tiny import build_tiny_pipeline
    from hayai.training import TrainConfig
    from hayai.training.loop import _prepare_model

    pipe = build_tiny_pipeline(Family.SD1)
    asked = []
    real = pipe.text_encoder.gradient_checkpointing_enable
    monkeypatch.setattr(pipe.text_encoder, "gradient_checkpointing_enable",
                        lambda **kwargs: (asked.append(kwargs), real(**kwargs))[1])
    config = TrainConfig(gradient_checkpointing=True, train_text_encoder=True, rank=2, alpha=2.0,
                         target_modules=("to_q", "q_proj"))
    _prepare_model(pipe, config, Family.SD1, torch.device("cpu"), torch.float32)
    # transformers < 5 checkpoints reentrantly by default: no gradient reaches the LoRA through frozen inputs
    assert asked == [{"gradient_checkpointing_kwargs": {"use_reentrant": False}}]


def test_one_time_model_per_architecture_kind_loadable_from_a_calibration(tmp_path, monkeypatch):
    from hayai.memory.planner import plan

    facts = {name: facts_for_architecture(name) for name in ("sd15", "sd35m")}
    h200 = parse_device_spec("H200 141GB")
    assert not costs.time_model()["calibrated"]  # no GPU has measured it yet
    fitted = tmp_path / "time_model.json"
    fitted.write_text('{"efficiency": {"datacenter": {"unet": 0.4, "mmdit": 0.5}}, "launch_seconds": {"datacenter": 1e-5},'
                      ' "launches_per_step": {"unet": 1500}, "calibrated": true}')
    monkeypatch.setattr(costs, "CALIBRATION_FILE", fitted)
    costs.time_model.cache_clear()
    try:
        assert costs.time_model()["calibrated"] and costs.time_model()["efficiency"]["gpu"]["unet"] == 0.30  # kept
        for name, e, launches in (("sd15", 0.4, 1500 * 1e-5), ("sd35m", 0.5, 0.0)):
            request = PlanRequest(512, 512, steps=10)
            chosen = plan(facts[name], request, h200).chosen
            flops = costs.denoiser_flops(facts[name], 512, 512, 2)
            assert chosen.strategy.placement == "resident"
            assert chosen.phase_seconds["denoise"] == pytest.approx(10 * (flops / (h200.tflops * 1e12 * e) + launches))
    finally:
        costs.time_model.cache_clear()
