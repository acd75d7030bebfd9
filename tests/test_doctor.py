"""The doctor's findings on machines that are not here, and device specs parsed from words."""

from __future__ import annotations

import dataclasses

import pytest

from hayai.doctor import diagnose
from hayai.errors import RequestError
from hayai.hardware import GIB, MachineInfo, capped, parse_device_spec
from hayai.memory.presets import suggest
from hayai.models.families import Family


def machine(*devices, **overrides) -> MachineInfo:
    cpu = parse_device_spec("cpu 32GB")
    fields = dict(devices=(*devices, cpu), os="Linux 6.1", python="3.11.7", torch_version="2.13.0",
                  torch_cuda="12.8", torch_hip=None, nvidia_gpu_present=bool(devices), cuda_visible_devices=None,
                  alloc_conf=None, disk_free_bytes=200 * GIB, versions={"diffusers": "0.42.1"})
    fields.update(overrides)
    return MachineInfo(**fields)


def by_topic(findings):
    return {f.topic: f for f in findings}


def test_cpu_only_torch_on_an_nvidia_machine_is_the_first_problem():
    findings = diagnose(machine(torch_cuda=None, nvidia_gpu_present=True, torch_version="2.13.0+cpu"))
    first = findings[0]
    assert first.level == "problem" and first.topic == "torch build"
    assert "CPU-only build" in first.message and "download.pytorch.org/whl/cu" in first.fix


def test_cuda_build_that_sees_no_gpu_points_at_the_driver_or_visible_devices():
    hidden = by_topic(diagnose(machine(nvidia_gpu_present=True, cuda_visible_devices="")))["GPU"]
    assert hidden.level == "problem" and "CUDA_VISIBLE_DEVICES" in hidden.fix
    driver = by_topic(diagnose(machine(nvidia_gpu_present=True)))["GPU"]
    assert "driver" in driver.fix


def test_small_cards_little_ram_and_disk_are_warned_about():
    small = parse_device_spec("RTX 2060 4GB")
    tight = machine(small, disk_free_bytes=5 * GIB, devices=(small, parse_device_spec("cpu 8GB")))
    topics = by_topic(diagnose(tight))
    assert topics["VRAM"].level == "warning" and "under 6 GiB" in topics["VRAM"].message
    assert topics["RAM"].level == "warning" and topics["disk"].level == "warning"
    roomy = by_topic(diagnose(machine(parse_device_spec("RTX 4090 24GB"))))
    assert roomy["VRAM"].level == "ok" and roomy["RAM"].level == "ok" and roomy["disk"].level == "ok"


def test_windows_gets_the_sysmem_fallback_advice_and_allocator_hint():
    topics = by_topic(diagnose(machine(parse_device_spec("RTX 4060 8GB"), os="Windows 11")))
    assert "Prefer No Sysmem Fallback" in topics["sysmem fallback"].fix
    assert "expandable_segments:True" in topics["allocator"].fix
    assert "sysmem fallback" not in by_topic(diagnose(machine(parse_device_spec("RTX 4060 8GB"))))


def test_device_specs_from_words():
    card = parse_device_spec("8GB CUDA card, PCIe 4.0 x8")
    assert card.kind == "cuda" and card.total_bytes == 8 * GIB and card.simulated
    assert card.link_gbps == pytest.approx(1.969 * 8 * 0.8, abs=0.1)
    assert "speed unknown" in card.name
    ada = parse_device_spec("RTX 4060 8GB")
    assert ada.tflops == 30.2 and ada.fp8 and ada.bf16
    turing = parse_device_spec("RTX 2070 8GB")
    assert not turing.bf16 and not turing.fp8 and turing.half_dtype == "float16"
    assert parse_device_spec("cpu").kind == "cpu"
    with pytest.raises(RequestError, match="names no memory size"):
        parse_device_spec("RTX 4090")
    with pytest.raises(RequestError, match="PCIe generation 7"):
        parse_device_spec("8GB card PCIe 7.0 x16")


def test_capping_keeps_what_others_use():
    card = dataclasses.replace(parse_device_spec("RTX 4090 24GB"), free_bytes=20 * GIB)
    small = capped(card, 8 * GIB)
    assert small.total_bytes == 8 * GIB and small.free_bytes == 4 * GIB


@pytest.mark.parametrize(
    "spec, family, preset, expected",
    [
        ("RTX 2060 4GB", Family.SD1, "balanced", ("entry", 1, 640, 25)),
        ("RTX 4060 8GB", Family.SDXL, "speed", ("middle", 2, 768, 30)),
        ("RTX 4090 24GB", Family.SDXL, "quality", ("high-end", 8, 1280, 100)),
        ("RTX 4090 24GB", Family.SD1, "quality", ("high-end", 8, 768, 100)),  # SD1.5 kept near its 512 px
        ("cpu", Family.SD1, "speed", ("entry", 1, 512, 20)),
    ],
)
def test_presets_follow_seed_000_tiers(spec, family, preset, expected):
    s = suggest(parse_device_spec(spec), family, preset)
    assert (s.tier, s.batch_size, s.width, s.steps) == expected and s.width == s.height
    assert s.allow_lossy == (preset == "speed")


def test_presets_keep_a_small_model_at_its_own_size():
    """The built-in demo model was trained at 64 px: the entry tier's 512 px drew noise."""
    assert {(s.width, s.height) for s in (suggest(parse_device_spec("cpu"), Family.SD1, p, native=64)
                                          for p in ("speed", "balanced", "quality"))} == {(64, 64)}
    assert suggest(parse_device_spec("cpu"), Family.SD1, "speed", native=512).width == 512


def test_gtx_16xx_is_rated_at_its_fp32_speed_and_planned_in_float32():
    from hayai.memory.strategies import candidates

    card = parse_device_spec("GTX 1650 4GB")
    assert card.tflops == 3.0 and not card.fp16 and card.half_dtype == "float32"
    assert "--no-half" in card.describe()
    assert {c.dtype for c in candidates(card)} == {"float32"}
    assert parse_device_spec("RTX 3060 12GB").half_dtype == "bfloat16"


def test_vram_on_a_cpu_is_refused_with_what_to_do_instead():
    from inprocess import hayai

    proc = hayai("generate", "x", "--vram", "2GB", "--device", "cpu", check=False)
    assert proc.returncode == 2 and "--vram caps GPU memory" in proc.stderr and "hayai plan --vram 2GB" in proc.stderr


def test_the_openvino_cache_is_reported_with_its_size_and_the_clear_command_only_when_it_holds_something():
    from pathlib import Path

    from hayai.speed.openvino_cache import Usage

    assert "OpenVINO cache" not in by_topic(diagnose(machine()))
    assert "OpenVINO cache" not in by_topic(diagnose(machine(), openvino_cache=None))
    held = Usage(Path("/h/cache/openvino"), conversions=3, bytes=int(9.6 * GIB), cap_bytes=16 * GIB)
    finding = by_topic(diagnose(machine(), openvino_cache=held))["OpenVINO cache"]
    assert finding.level == "info"
    assert finding.message == ("3 OpenVINO conversion(s), 9.6 GiB in /h/cache/openvino (kept under 16 GiB by "
                               "HAYAI_OPENVINO_CACHE_GB, least recently used removed first)")
    assert finding.fix.startswith("hayai models cache --clear-openvino")
    bad = Usage(Path("/h/cache/openvino"), 1, GIB, None, "HAYAI_OPENVINO_CACHE_GB='x' is not a size in GiB")
    finding = by_topic(diagnose(machine(), openvino_cache=bad))["OpenVINO cache"]
    assert finding.level == "warning" and "a run that converts will stop: HAYAI_OPENVINO_CACHE_GB='x'" in finding.message


def test_hayai_doctor_finds_the_openvino_cache_on_disk():
    import json

    from inprocess import hayai

    from hayai.speed import openvino

    topics = [f["topic"] for f in json.loads(hayai("doctor", "--json").stdout)["findings"]]
    assert "OpenVINO cache" not in topics and "disk" in topics
    openvino.cache_folder("h", 64, 64).parent.mkdir(parents=True)  # an empty cache is nothing to report either
    assert "OpenVINO cache" not in [f["topic"] for f in json.loads(hayai("doctor", "--json").stdout)["findings"]]
    folder = openvino.cache_folder("h", 64, 64)
    folder.mkdir()
    (folder / "unet.bin").write_bytes(b"\0" * 2048)
    (folder / "conversion.json").write_text(json.dumps({"seconds": 1.0, "converted_at": "2020-01-01T00:00:00Z"}))
    found = {f["topic"]: f for f in json.loads(hayai("doctor", "--json").stdout)["findings"]}["OpenVINO cache"]
    assert found["level"] == "info" and found["message"].startswith("1 OpenVINO conversion(s), 0.0 GiB in ")
    assert "hayai models cache --clear-openvino" in hayai("doctor").stdout
