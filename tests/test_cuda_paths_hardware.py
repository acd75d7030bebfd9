"""Issue 16, the device's side: the allocator cap (set, lifted, Windows' default), and what a card is rated."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hayai.hardware import GIB, DeviceSpec, allocator_fraction, known_gpu

H200 = DeviceSpec(kind="cuda", name="NVIDIA H200", total_bytes=140 * GIB, free_bytes=139 * GIB, bf16=True, fp16=True,
                  fp8=True, sdpa=True, tflops=989.0, link_gbps=50.0, host_ram_bytes=128 * GIB)


def test_the_allocator_cap_leaves_out_what_lives_outside_it():
    assert allocator_fraction(H200, 8 * GIB, system="Linux") == pytest.approx(7 / 140)  # 1 GiB is the CUDA context
    assert allocator_fraction(H200, None, system="Linux") == 1.0
    assert allocator_fraction(H200, None, system="Windows") == 0.95  # past it the driver spills instead of failing
    assert allocator_fraction(H200, 139 * GIB, system="Windows") == 0.95


def test_an_engine_without_vram_lifts_the_cap_an_earlier_one_set(monkeypatch):
    from hayai.generation.engine import Engine

    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, index: calls.append((fraction, index)))
    monkeypatch.setattr("platform.system", lambda: "Linux")
    capped = Engine(device=H200, vram=8 * GIB)
    assert capped.device_spec.total_bytes == 8 * GIB
    Engine(device=H200)
    assert calls == [(pytest.approx(7 / 140), 0), (1.0, 0)]


def test_h100_sxm_is_rated_as_sxm():
    assert known_gpu("NVIDIA H100 80GB HBM3")[0] == 989.0  # what torch calls the SXM part
    assert known_gpu("NVIDIA H100 PCIe")[0] == 756.0


def test_an_unknown_pre_ampere_card_gets_fp16_not_emulated_bf16(monkeypatch):
    from hayai import hardware

    props = SimpleNamespace(name="Quadro P5000", major=6, minor=1)
    cuda = SimpleNamespace(device_count=lambda: 1, get_device_properties=lambda i: props,
                           mem_get_info=lambda i: (15 * GIB, 16 * GIB),
                           is_bf16_supported=lambda including_emulation=True: including_emulation)
    fake = SimpleNamespace(cuda=cuda, version=SimpleNamespace(hip=None), nn=torch.nn)
    monkeypatch.setattr(hardware, "_nvidia_smi", lambda query: [])
    (card,) = hardware._cuda_devices(fake, 64 * GIB)
    assert not card.bf16 and card.half_dtype == "float16"
