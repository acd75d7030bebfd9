"""`hayai doctor`: the usual reasons local generation is slow or fails, checked on this machine.

Seed 000's troubleshooting list made automatic: a CPU-only torch on a machine with an NVIDIA GPU,
CUDA not visible, little VRAM / RAM / disk, Windows' system-memory fallback, allocator settings,
library versions, and the disk the OpenVINO cache takes. `diagnose(machine)` is pure (a `MachineInfo` and
the cache's `openvino_cache.Usage` in, findings out), so every finding is tested on machines that are not here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hayai.hardware import GIB, MachineInfo

__all__ = ["Finding", "diagnose"]


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "info", "warning" or "problem"
    topic: str
    message: str
    fix: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def diagnose(machine: MachineInfo, openvino_cache=None) -> list[Finding]:
    """Every check, in the order a person would go through them; `openvino_cache` is
    `hayai.speed.openvino_cache.usage()` (None: the cache holds nothing)."""
    findings = [_torch_build(machine)]
    findings += _accelerators(machine)
    findings += [_host_ram(machine), _disk(machine), _openvino_cache(openvino_cache), _allocator(machine)]
    findings += _windows(machine)
    findings.append(Finding("info", "versions", ", ".join(
        [f"python {machine.python}", f"torch {machine.torch_version}"] + [f"{k} {v}" for k, v in machine.versions.items()]
    )))
    return [f for f in findings if f is not None]


def _torch_build(machine: MachineInfo) -> Finding:
    if machine.nvidia_gpu_present and machine.torch_cuda is None and machine.torch_hip is None:
        return Finding(
            "problem", "torch build",
            f"an NVIDIA GPU is installed, but torch {machine.torch_version} is a CPU-only build: everything runs on "
            "the CPU (the '30 minutes per image' symptom)",
            "reinstall torch with CUDA: pip install --force-reinstall torch --index-url "
            "https://download.pytorch.org/whl/cu128 (pick the CUDA version your driver supports)",
        )
    built = f"CUDA {machine.torch_cuda}" if machine.torch_cuda else (f"ROCm {machine.torch_hip}" if machine.torch_hip else "CPU only")
    return Finding("ok", "torch build", f"torch {machine.torch_version} ({built})")


def _accelerators(machine: MachineInfo) -> list[Finding]:
    accelerators = [d for d in machine.devices if d.accelerator]
    if not accelerators:
        if machine.nvidia_gpu_present and machine.torch_cuda is not None:
            hidden = machine.cuda_visible_devices is not None and machine.cuda_visible_devices.strip() in ("", "-1")
            fix = ("CUDA_VISIBLE_DEVICES hides every GPU: unset it" if hidden else
                   "the driver may be too old for this torch's CUDA, or the GPU is in use by a VM: run nvidia-smi; "
                   "update the driver")
            return [Finding("problem", "GPU", "torch was built with CUDA but sees no GPU", fix)]
        return [Finding("warning", "GPU", "no GPU: generation runs on the CPU, minutes per image at full size",
                        "use small sizes and few steps here (hayai plan shows the estimate), or a machine with a GPU")]
    findings = []
    for device in accelerators:
        memory = device.total_bytes / GIB
        text = f"{device.name}: {memory:.1f} GiB, {device.free_bytes / GIB:.1f} GiB free, " + \
            ", ".join(p for p, on in (("bf16", device.bf16), ("fp8", device.fp8), ("fused attention", device.sdpa)) if on)
        if memory < 6:
            findings.append(Finding("warning", "VRAM", text + " — under 6 GiB: SDXL and SD3 need offloading",
                                    "hayai plans offloading for you; prefer SD1.5-class models and 512-768 px"))
        else:
            findings.append(Finding("ok", "VRAM", text))
        if device.free_bytes < 0.7 * device.total_bytes:
            findings.append(Finding("warning", "VRAM in use", f"{(device.total_bytes - device.free_bytes) / GIB:.1f} GiB "
                                    "of the GPU is taken by other programs", "close other GPU programs (browsers, games, other UIs)"))
    return findings


def _host_ram(machine: MachineInfo) -> Finding:
    cpu = machine.cpu
    total = cpu.host_ram_bytes / GIB
    if total < 16:
        return Finding("warning", "RAM", f"{total:.1f} GiB of RAM: offloaded weights live here; under 16 GiB is unstable "
                       "with SDXL/SD3", "close other programs; prefer strategies that keep weights on the GPU")
    return Finding("ok", "RAM", f"{total:.1f} GiB, {cpu.free_bytes / GIB:.1f} GiB available")


def _disk(machine: MachineInfo) -> Finding:
    free = machine.disk_free_bytes / GIB
    if free < 20:
        return Finding("warning", "disk", f"{free:.1f} GiB free where hayai keeps its files: an SDXL checkpoint is 7 GB",
                       "free space or set HAYAI_HOME to a bigger disk (an SSD loads models faster)")
    return Finding("ok", "disk", f"{free:.0f} GiB free")


def _openvino_cache(usage) -> Finding | None:
    if usage is None:
        return None
    held = f"{usage.conversions} OpenVINO conversion(s), {usage.bytes / GIB:.1f} GiB in {usage.folder}"
    if usage.cap_problem:
        return Finding("warning", "OpenVINO cache", f"{held}; a run that converts will stop: {usage.cap_problem}",
                       "unset HAYAI_OPENVINO_CACHE_GB (16 GiB) or set it to a number of GiB")
    return Finding("info", "OpenVINO cache", f"{held} (kept under {usage.cap_bytes / GIB:g} GiB by "
                   "HAYAI_OPENVINO_CACHE_GB, least recently used removed first)",
                   "hayai models cache --clear-openvino frees it; a run converts again what it needs")


def _allocator(machine: MachineInfo) -> Finding | None:
    if not any(d.kind == "cuda" for d in machine.devices):
        return None
    if machine.alloc_conf and "expandable_segments:True" in machine.alloc_conf:
        return Finding("ok", "allocator", f"PYTORCH_CUDA_ALLOC_CONF={machine.alloc_conf}")
    return Finding("info", "allocator", "PYTORCH_CUDA_ALLOC_CONF does not set expandable_segments",
                   "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (less fragmentation, fewer OOMs near the limit)")


def _windows(machine: MachineInfo) -> list[Finding]:
    if not machine.os.startswith("Windows") or not any(d.kind == "cuda" for d in machine.devices):
        return []
    return [Finding(
        "warning", "sysmem fallback",
        "NVIDIA drivers since 536.40 spill into system RAM when VRAM is full: no error, but a run can take 30x longer "
        "(one report: 2317 s for one SD3.5 image on an 8 GB card)",
        "NVIDIA Control Panel > Manage 3D settings > CUDA - Sysmem Fallback Policy: Prefer No Sysmem Fallback "
        "(driver 546.01+); hayai then sees a real OOM and steps down instead",
    )]
