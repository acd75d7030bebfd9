"""What the machine can do: devices, memory, precision support, throughput and link speed.

`probe()` measures the machine at hand and returns plain data; `parse_device_spec("8GB CUDA card,
PCIe 4.0 x8")` describes one that is not there, so every planning decision can be made (and tested)
for a 4 GB laptop or an 80 GB server from any machine. Importing this module probes nothing.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from hayai.errors import RequestError

__all__ = ["DeviceSpec", "MachineInfo", "probe", "host_memory", "free_cores", "cpu_threads", "use_cpu_threads",
           "parse_device_spec", "parse_size", "known_gpu", "capped", "cap_memory", "allocator_fraction", "GIB",
           "WINDOWS_VRAM_FRACTION"]

GIB = 1024**3

# Dense FP16/BF16 tensor throughput with FP32 accumulate (what PyTorch uses), TFLOP/s, from NVIDIA's
# Ampere (GA102), Ada (AD102) and Hopper whitepapers and product pages; GeForce cards run FP32-accumulate
# at half the FP16-accumulate rate. Longest names first so "4060 ti" wins over "4060".
_GPU_TFLOPS: dict[str, float] = {
    "h200": 989.0, "h100 sxm": 989.0, "h100 80gb hbm3": 989.0, "h100": 756.0, "h800": 756.0, "a100": 312.0, "l40s": 362.0, "l4": 121.0,
    "a10": 125.0, "t4": 65.0, "v100": 125.0,
    "rtx 4090": 165.2, "rtx 4080": 97.5, "rtx 4070 ti": 80.2, "rtx 4070": 58.3, "rtx 4060 ti": 44.1, "rtx 4060": 30.2,
    "rtx 3090": 71.0, "rtx 3080": 59.5, "rtx 3070": 40.6, "rtx 3060 ti": 32.4, "rtx 3060": 25.6,
    "rtx 2080 ti": 53.8, "rtx 2070": 29.9, "rtx 2060": 25.8, "gtx 1080": 9.0,
    # GTX 16xx (Turing without tensor cores): their fp32 rate, since they run float32 (see _NO_HALF)
    "gtx 1660 ti": 5.4, "gtx 1660 super": 5.0, "gtx 1660": 5.0, "gtx 1650 super": 4.4, "gtx 1650": 3.0,
}
# GPUs whose half precision gives black or NaN images in Stable Diffusion (A1111 users run them with
# --no-half): planned in float32.
_NO_HALF = ("gtx 16",)
NO_HALF_NOTE = "GTX 16xx: float32, as A1111's --no-half (half precision gives black images on these cards)"
# GPUs with FP8 tensor cores (Ada, Hopper and newer) and without BF16 (before Ampere).
_FP8 = ("h200", "h100", "h800", "l40s", "l4", "rtx 40", "rtx 50")
_NO_BF16 = ("t4", "v100", "rtx 20", "gtx")
# PCIe payload bandwidth per lane, GB/s (after 128b/130b encoding), by generation.
_PCIE_LANE_GBPS = {3: 0.985, 4: 1.969, 5: 3.938}
_PCIE_EFFICIENCY = 0.8  # what pinned-memory copies reach of the link's payload rate in practice
# A CPU core with AVX2 FMA: 2 FMA units x 8 fp32 lanes x 2 flops at ~3 GHz; eager PyTorch reaches a fraction.
_CPU_CORE_GFLOPS = 96.0
_DEFAULT_GPU_TFLOPS = 30.0  # an unknown CUDA card: assume a mid-range (RTX 4060-class) part
# Without --vram on Windows, the allocator may reserve this much of the card: past dedicated VRAM the WDDM
# driver spills into shared host memory (10x slower) instead of failing, so a plan's OOM would never come.
WINDOWS_VRAM_FRACTION = 0.95


@dataclass(frozen=True)
class DeviceSpec:
    kind: str  # "cuda", "rocm", "mps" or "cpu"
    name: str
    total_bytes: int  # device memory; host RAM for "cpu"
    free_bytes: int
    bf16: bool
    fp16: bool
    fp8: bool
    sdpa: bool  # a fused attention kernel (flash / memory-efficient) that never builds the N x N scores
    tflops: float  # dense half-precision peak (fp32 for "cpu")
    link_gbps: float  # host <-> device copy bandwidth, GB/s (0 for "cpu")
    host_ram_bytes: int
    compute_capability: tuple[int, int] | None = None
    host_tflops: float = 8 * _CPU_CORE_GFLOPS / 1000  # the host CPU, for work moved off the device (8 cores)
    simulated: bool = False
    index: int = 0
    threads: int = 0  # a CPU: the torch threads its `tflops` counts (one core's peak each); 0 for accelerators

    @property
    def accelerator(self) -> bool:
        return self.kind != "cpu"

    @property
    def torch_device(self) -> str:
        return {"cuda": f"cuda:{self.index}", "rocm": f"cuda:{self.index}"}.get(self.kind, self.kind)

    @property
    def key(self) -> str:
        """This device among others, in what the store keeps per device (the planner's memory, speed measurements)."""
        return f"{self.kind}|{self.name}|{self.total_bytes}"

    @property
    def half_dtype(self) -> str:
        return "bfloat16" if self.bf16 else ("float16" if self.fp16 else "float32")

    def describe(self) -> str:
        mem = f"{self.total_bytes / GIB:.1f} GiB"
        link = f", link {self.link_gbps:.0f} GB/s" if self.accelerator else ""
        threads = f" on {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else ""
        return (f"{self.name} ({self.kind}, {mem}, ~{self.tflops:g} TFLOP/s{threads}{link}"
                f"{', simulated' if self.simulated else ''})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MachineInfo:
    devices: tuple[DeviceSpec, ...]  # accelerators first, the CPU last
    os: str
    python: str
    torch_version: str
    torch_cuda: str | None  # the CUDA version torch was built for; None for a CPU-only build
    torch_hip: str | None
    nvidia_gpu_present: bool  # an NVIDIA driver is installed (whether or not torch can see it)
    cuda_visible_devices: str | None
    alloc_conf: str | None
    disk_free_bytes: int
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> DeviceSpec:
        return self.devices[0]

    @property
    def cpu(self) -> DeviceSpec:
        return self.devices[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def known_gpu(name: str) -> tuple[float | None, bool, bool]:
    """(tflops or None, bf16, fp8) for a GPU name, from the tables above."""
    lower = name.lower()
    tflops = next((value for key, value in sorted(_GPU_TFLOPS.items(), key=lambda kv: -len(kv[0])) if key in lower), None)
    fp8 = any(marker in lower for marker in _FP8)
    bf16 = not any(marker in lower for marker in _NO_BF16)
    return tflops, bf16, fp8


def host_memory() -> tuple[int, int]:
    """(total, available) host RAM in bytes."""
    try:
        info = Path("/proc/meminfo").read_text()
        total = int(re.search(r"MemTotal:\s+(\d+)", info).group(1)) * 1024
        available = int(re.search(r"MemAvailable:\s+(\d+)", info).group(1)) * 1024
        return total, available
    except (OSError, AttributeError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
        return pages, pages


def _nvidia_smi(query: str) -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def _cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _torch_threads() -> int:
    """The threads torch's CPU kernels run on now, at most the cores (more threads than cores add no speed)."""
    import torch

    return min(torch.get_num_threads(), _cores())


def _cpu_tflops(threads: int) -> float:
    return round(threads * _CPU_CORE_GFLOPS / 1000, 3)


def _cuda_devices(torch, host_total: int) -> list[DeviceSpec]:
    links = _nvidia_smi("pcie.link.gen.max,pcie.link.width.max")
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        tflops, bf16_by_name, fp8_by_name = known_gpu(props.name)
        capability = (props.major, props.minor)
        link = _PCIE_LANE_GBPS[4] * 16 * _PCIE_EFFICIENCY  # assumed PCIe 4.0 x16 unless nvidia-smi says
        if index < len(links):
            try:
                gen, width = (int(x) for x in links[index].split(","))
                link = _PCIE_LANE_GBPS.get(gen, _PCIE_LANE_GBPS[4]) * width * _PCIE_EFFICIENCY
            except ValueError:
                pass  # "[N/A]" on some virtualised GPUs: keep the assumption
        devices.append(
            DeviceSpec(
                kind="rocm" if getattr(torch.version, "hip", None) else "cuda",
                name=props.name if not any(m in props.name.lower() for m in _NO_HALF) else f"{props.name}; {NO_HALF_NOTE}",
                total_bytes=int(total),
                free_bytes=int(free),
                # natively from Ampere (8.0) on; torch reports emulated bf16 as supported on older cards
                bf16=bool(torch.cuda.is_bf16_supported(including_emulation=False)) and bf16_by_name and capability >= (8, 0),
                fp16=not any(marker in props.name.lower() for marker in _NO_HALF),
                fp8=capability >= (8, 9) or fp8_by_name,
                sdpa=hasattr(torch.nn.functional, "scaled_dot_product_attention") and capability >= (7, 5),
                tflops=tflops or _DEFAULT_GPU_TFLOPS,
                link_gbps=round(link, 1),
                host_ram_bytes=host_total,
                compute_capability=capability,
                host_tflops=_cpu_tflops(_torch_threads()),
                index=index,
            )
        )
    return devices


def _cpu_device(host_total: int, host_free: int) -> DeviceSpec:
    """This CPU, as fast as the threads torch runs on now (`use_cpu_threads` sets them before a run is planned)."""
    threads = _torch_threads()
    return DeviceSpec(
        kind="cpu", name=platform.processor() or platform.machine() or "cpu", total_bytes=host_total,
        free_bytes=host_free, bf16=False, fp16=False, fp8=False, sdpa=True, tflops=_cpu_tflops(threads), link_gbps=0.0,
        host_ram_bytes=host_total, host_tflops=_cpu_tflops(threads), threads=threads,
    )


def free_cores(cpus: int | None = None, load: float | None = None) -> int:
    """The CPU cores this process may use that other work is not using: the cores it may run on
    (`os.sched_getaffinity`) less the 1-minute load average, at least 1. On a busy 2-core machine one torch
    thread denoised 10x faster than two that waited on each other (issue 15)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, round(cpus - load)))


def cpu_threads(asked: int | None = None) -> tuple[int, str]:
    """How many threads torch should use on the CPU, and why: `asked`, else $OMP_NUM_THREADS, else the free cores."""
    if asked is not None:
        if asked < 1:
            raise RequestError(f"threads={asked} must be at least 1")
        return asked, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    return free_cores(), "free cores (CPUs less the load average)"


def use_cpu_threads(asked: int | None = None) -> int:
    """Set torch's CPU thread count for this process as `cpu_threads(asked)` says, before a run is probed and
    planned (the CPU's predicted speed is that of these threads); the count."""
    import torch

    threads = cpu_threads(asked)[0]
    torch.set_num_threads(threads)
    return threads


def probe() -> MachineInfo:
    """Measure this machine: every visible accelerator, then the CPU, plus what `hayai doctor` needs."""
    import torch

    from hayai import paths

    host_total, host_free = host_memory()
    devices: list[DeviceSpec] = []
    if torch.cuda.is_available():
        devices += _cuda_devices(torch, host_total)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        # Apple silicon shares RAM with the GPU; macOS lets the GPU use roughly 3/4 of it.
        devices.append(DeviceSpec("mps", "Apple GPU", int(host_total * 0.75), int(host_free * 0.75), False, True,
                                  False, True, 10.0, 0.0, host_total, host_tflops=_cpu_tflops(_torch_threads())))
    devices.append(_cpu_device(host_total, host_free))
    home = paths.hayai_home()
    disk_root = next((p for p in [home, *home.parents] if p.exists()), Path("/"))
    versions = {}
    for package in ("diffusers", "transformers", "accelerate", "safetensors"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = "missing"
    return MachineInfo(
        devices=tuple(devices),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        torch_version=torch.__version__,
        torch_cuda=torch.version.cuda,
        torch_hip=getattr(torch.version, "hip", None),
        nvidia_gpu_present=bool(_nvidia_smi("name")) or Path("/proc/driver/nvidia/version").exists(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        disk_free_bytes=shutil.disk_usage(disk_root).free,
        versions=versions,
    )


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb)\b", re.I)
_PCIE = re.compile(r"pcie\s*(\d)(?:\.0)?\s*x\s*(\d+)", re.I)


def parse_device_spec(text: str, *, host_ram_bytes: int = 32 * GIB) -> DeviceSpec:
    """A device that may not be here, from words: "8GB CUDA card, PCIe 4.0 x8", "RTX 4090", "cpu 16GB".

    Memory sizes are GiB, as card makers mean them. A card named in the throughput table gets its speed;
    an unnamed one is taken for a mid-range card and its name says so.
    """
    lower = text.lower().strip()
    if not lower:
        raise RequestError("device spec is empty; e.g. '8GB CUDA card, PCIe 4.0 x8', 'RTX 4090' or 'cpu'")
    memory = _MEMORY.search(lower)
    total = None
    if memory:
        scale = GIB if memory.group(2).lower() in ("gib", "gb", "g") else 1024**2
        total = int(float(memory.group(1)) * scale)
    if lower.startswith("cpu"):
        total = total or host_ram_bytes
        return DeviceSpec("cpu", f"simulated CPU ({text.strip()})", total, total, False, False, False, True,
                          _cpu_tflops(_cores()), 0.0, total, simulated=True, threads=_cores())
    tflops, bf16, fp8 = known_gpu(lower)
    if total is None:
        raise RequestError(f"device spec {text!r} names no memory size; add one, e.g. '{text.strip()} 8GB'")
    pcie = _PCIE.search(lower)
    gen, lanes = (int(pcie.group(1)), int(pcie.group(2))) if pcie else (4, 16)
    if gen not in _PCIE_LANE_GBPS:
        raise RequestError(f"device spec {text!r}: PCIe generation {gen} is unknown (3, 4 or 5)")
    kind = "rocm" if ("rocm" in lower or "amd" in lower or "radeon" in lower) else "cuda"
    name = text.strip() if tflops else f"{text.strip()} (speed unknown: assumed {_DEFAULT_GPU_TFLOPS:g} TFLOP/s)"
    half = not any(marker in lower for marker in _NO_HALF)
    name = name if half else f"{name}; {NO_HALF_NOTE}"
    # the driver and CUDA context take ~0.3-0.5 GiB of a card before anything is loaded
    context = int(0.4 * GIB)
    return DeviceSpec(
        kind=kind, name=name, total_bytes=total, free_bytes=max(total - context, 0), bf16=bf16, fp16=half, fp8=fp8,
        sdpa=True, tflops=tflops or _DEFAULT_GPU_TFLOPS,
        link_gbps=round(_PCIE_LANE_GBPS[gen] * lanes * _PCIE_EFFICIENCY, 1), host_ram_bytes=host_ram_bytes,
        simulated=True,
    )


def parse_size(text: str, flag: str = "--vram") -> int:
    """'8GB', '7.5 GiB', '6144MB' -> bytes (GiB, as card makers mean GB); `flag` names the option in errors."""
    match = _MEMORY.fullmatch(text.strip().lower()) or _MEMORY.fullmatch(text.strip().lower() + "gb")
    if not match:
        raise RequestError(f"{flag}={text!r} is not a size; write e.g. 8GB or 6144MB")
    scale = GIB if match.group(2).lower() in ("gib", "gb", "g") else 1024**2
    return int(float(match.group(1)) * scale)


def capped(device: DeviceSpec, total_bytes: int) -> DeviceSpec:
    """The same device with less memory (what `--vram 8GB` simulates on a bigger card)."""
    used = device.total_bytes - device.free_bytes
    return replace(device, total_bytes=total_bytes, free_bytes=max(total_bytes - used, 0), simulated=True,
                   name=f"{device.name} capped to {total_bytes / GIB:.1f} GiB")


def allocator_fraction(device: DeviceSpec, vram: int | None, *, system: str | None = None) -> float:
    """The share of `device` PyTorch's CUDA allocator may reserve so that the run sees `vram` bytes.

    The allocator's cap leaves out what lives outside it (the CUDA context, other processes: the device's
    total less its free bytes when probed), so `vram` of the card is what the whole process gets, as on a
    card of that size. Without a cap: all of it, or `WINDOWS_VRAM_FRACTION` on Windows.
    """
    ceiling = WINDOWS_VRAM_FRACTION if (system or platform.system()) == "Windows" else 1.0
    if vram is None:
        return ceiling
    outside = device.total_bytes - device.free_bytes
    return min(ceiling, max(vram - outside, 0) / device.total_bytes) or 1 / device.total_bytes


def cap_memory(device: DeviceSpec, vram: int | None) -> DeviceSpec:
    """The device to plan for with `vram` bytes (None: as it is); on a real CUDA device the allocator is
    capped to match (so going past the plan is a real OOM), or the cap a previous caller set is lifted."""
    if vram is not None and not device.accelerator:
        raise RequestError(f"--vram caps GPU memory, and this run is on the CPU ({device.name}); leave it out, or "
                           f"see a card of that size with `hayai plan --vram {vram / GIB:g}GB`")
    if vram is not None and (vram <= 0 or vram > device.total_bytes):
        raise RequestError(f"vram={vram} must be between 1 and the device's {device.total_bytes} bytes")
    if device.kind in ("cuda", "rocm") and not device.simulated:
        import torch

        torch.cuda.set_per_process_memory_fraction(allocator_fraction(device, vram), device.index)
    return capped(device, vram) if vram is not None else device
