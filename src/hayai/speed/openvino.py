"""OpenVINO as a CPU execution lever: the UNet converted once, cached by model hash and size, and run by
OpenVINO's CPU plugin in place of PyTorch's kernels.

Only the UNet changes hands: it is where the steps' time goes, and everything around it stays hayai's own,
so an OpenVINO run takes the normal request path: the same prompt encoding (A1111 weighting, clip skip,
long prompts), the same sampler object (`generation.samplers.build_scheduler`), the same seeds and initial
latents, the same PyTorch VAE. The UNet's `forward` is replaced on the instance (`attach`) by one that
runs the compiled model when it can, and the original otherwise: a call at a size not compiled (the
second pass of hires fix), or with inputs the converted graph does not take (ControlNet residuals, a
`timestep_cond`, cross-attention kwargs). `OpenVinoUNet.calls` counts both.

Why not optimum-intel (`OVStableDiffusionPipeline`)? It cannot share hayai's environment: 2.2.0, its
newest, requires transformers < 5.6 and torchvision; pinned to hayai's transformers 5.x, pip falls back to
1.15, which imports `transformers.onnx` (removed in transformers 5). Its pipelines would also own the
sampler and the prompt encoding. `openvino.convert_model` converts the torch module directly.

How it is converted (`convert`): traced with example inputs, then the latent height and width made static
(the size is in the cache key: `$HAYAI_HOME/cache/openvino/<model sha256>-<W>x<H>/`), while the batch (CFG
on or off, batch size) and the token count (prompts past 75 tokens) stay dynamic. The weights are saved in
float32 (`save_model` would halve them to fp16 by default) and compiled with the f32 precision hint (the CPU
plugin would pick bf16 on AVX-512-bf16/AMX CPUs), so pixels stay within float rounding of PyTorch's (the
tiny SD1 model: 129 dB PSNR between the float images of a 4-step DPM++ 2M Karras run). `conversion.json` beside the model records how long
conversion took and when the conversion was last loaded for a run. Each load then compiles the saved model
(about 3 s for SD1.5's UNet on our CPU); OpenVINO's compiled-blob cache (`CACHE_DIR`) is not used: it saved
0.3 s of that and took another 3.3 GB of disk per size.

The cache is bounded (`hayai.speed.openvino_cache`): after a new conversion is saved, the least recently used
others are removed until the conversions total at most `$HAYAI_OPENVINO_CACHE_GB` GiB (16 by default), never
the new one or one a UNet in this process runs on; the run's warnings name what went. `hayai models cache`
lists the cache and `--clear-openvino` empties it.

When it is on (`decide`): never by default. Only with the extra installed, on the CPU (float32, the whole
batch at once), for SD1/SD2/SDXL without LoRAs (they are patched into the torch weights, not the converted
ones) or UNet speed levers (their hooks sit inside the torch UNet), and only where a measurement made here
(`hayai bench speed --levers openvino`) gives its per-step ratio and the time it saves on this request,
steps x images x seconds per step x (1 - ratio), exceeds the conversion still to pay (0 once cached;
`hayai.speed.execution.pays_back`, the rule `compile` goes by too).
Measured on our CPU (SD1.5's architecture with random weights, 256 px, 4 steps, 1 thread, 2 rounds of
`hayai bench speed`): 0.77x denoising time, 0.81x end to end, 83 dB PSNR; 87 s to convert, 3.4 GB of cache
per size, and 12.4 GB peak for the bench process (the torch UNet stays loaded beside the compiled one, for
the calls it falls back on; reference §11 saw 8.4 GB against 4.6 GB for a single run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from hayai.errors import RequestError
from hayai.hardware import GIB
from hayai.models.families import Family
from hayai.speed import openvino_cache
from hayai.speed.execution import pays_back, step_seconds

__all__ = ["EXTRA_MEMORY", "FAMILIES", "OpenVinoUNet", "attach", "available", "cache_folder", "check_family",
           "conversion_seconds", "convert", "decide", "detach", "extra_bytes", "in_use", "is_converted", "left_out",
           "ready", "INSTALL"]

FAMILIES = (Family.SD1, Family.SD2, Family.SDXL)  # UNet2DConditionModel denoisers
INSTALL = "pip install 'hayai[openvino]'"
_XML = "unet.xml"
_RECORD = openvino_cache.RECORD
_ATTR = "_hayai_openvino"
_ATTACHED = weakref.WeakSet()  # every live OpenVinoUNet in this process: their folders are in use


def available() -> bool:
    """Whether the `[openvino]` extra is installed (nothing is imported)."""
    return importlib.util.find_spec("openvino") is not None


def cache_folder(model_hash: str, width: int, height: int) -> Path:
    return openvino_cache.root() / f"{model_hash}-{width}x{height}"


def is_converted(model_hash: str, width: int, height: int) -> bool:
    folder = cache_folder(model_hash, width, height)
    return (folder / _XML).exists() and (folder / _RECORD).exists()


def conversion_seconds(model_hash: str) -> float | None:
    """The latest conversion time recorded for this model at any size (conversion is a trace and a save,
    nearly the same at every size; kept past the eviction of its folders), or None when it was never converted here."""
    records = []
    for path in openvino_cache.root().glob(f"{model_hash}-*/{_RECORD}"):
        record = json.loads(path.read_text())
        records.append((record["converted_at"], record["seconds"]))
    return max(records)[1] if records else openvino_cache.remembered_conversion(model_hash)


def check_family(family: Family) -> None:
    if family not in FAMILIES:
        raise RequestError(f"openvino converts UNet models ({', '.join(f.value for f in FAMILIES)}), not "
                           f"{family.value} models; run it without openvino")


def _import():
    try:
        import openvino
    except ImportError:
        raise RequestError(f"openvino is not installed; install the extra: {INSTALL}") from None
    return openvino


def _traced(unet, sdxl: bool):
    """The UNet call as a module with plain tensor inputs and one tensor out (what convert_model traces)."""
    import torch

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
            added = {"text_embeds": text_embeds, "time_ids": time_ids} if sdxl else None
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                             added_cond_kwargs=added, return_dict=False)[0]

    return Traced()


def _example(unet, family: Family, width: int, height: int, scale: int) -> tuple[dict, dict]:
    """Example inputs for tracing (batch 2: CFG) and the shapes to compile: latent size static, the rest dynamic."""
    import torch

    config = unet.config
    latent = (config.in_channels, height // scale, width // scale)
    inputs = {"sample": torch.randn(2, *latent), "timestep": torch.tensor([999.0, 999.0]),
              "encoder_hidden_states": torch.randn(2, 77, config.cross_attention_dim)}
    shapes = {"sample": [-1, *latent], "timestep": [-1], "encoder_hidden_states": [-1, -1, config.cross_attention_dim]}
    if family == Family.SDXL:
        time_ids = 6  # (original size, crop, target size), each embedded with addition_time_embed_dim
        pooled = unet.add_embedding.linear_1.in_features - time_ids * config.addition_time_embed_dim
        inputs.update(text_embeds=torch.randn(2, pooled), time_ids=torch.randn(2, time_ids))
        shapes.update(text_embeds=[-1, pooled], time_ids=[-1, time_ids])
    return inputs, shapes


def convert(unet, family: Family, model_hash: str, width: int, height: int, *, vae_scale: int = 8) -> dict:
    """Convert `unet` for `width` x `height` into its cache folder (replacing none: a finished folder is only
    ever renamed into place) and return the record kept beside it, with the seconds it took."""
    import torch
    from diffusers import UNet2DConditionModel

    check_family(family)
    if not isinstance(unet, UNet2DConditionModel):
        raise RequestError(f"openvino converts a UNet2DConditionModel; this {family.value} model's denoiser is a "
                           f"{type(unet).__name__}")
    if unet.config.time_cond_proj_dim is not None:
        raise RequestError("openvino does not convert a UNet that takes a guidance embedding (time_cond_proj_dim, "
                           "an LCM-distilled UNet); run it without openvino")
    ov = _import()
    folder = cache_folder(model_hash, width, height)
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    inputs, shapes = _example(unet, family, width, height, vae_scale)
    start = time.perf_counter()
    # TracerWarnings name Python branches on shapes frozen into the trace: in diffusers 0.42.1 they are
    # asserts, a `.contiguous()` for batches of 64 or more and a workaround for tensors over 2**31 elements
    # in PyTorch's interpolate, none of which changes the values OpenVINO computes
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(_traced(unet, family == Family.SDXL), example_input=inputs)
    model.reshape(shapes)
    ov.save_model(model, partial / _XML, compress_to_fp16=False)
    seconds = time.perf_counter() - start
    record = {"model_hash": model_hash, "family": family.value, "width": width, "height": height,
              "seconds": round(seconds, 3), "openvino_version": ov.get_version(), "torch_version": torch.__version__,
              "converted_at": openvino_cache.now()}
    record["last_used"] = record["converted_at"]
    (partial / _RECORD).write_text(json.dumps(record, indent=2) + "\n")
    openvino_cache.remember_conversion(model_hash, record["seconds"])
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same conversion first: keep its folder
        shutil.rmtree(partial, ignore_errors=True)
    return record


@dataclass(eq=False)  # (compared and hashed by identity: `_ATTACHED` holds them)
class OpenVinoUNet:
    """What `attach` keeps on a UNet: its own forward, the compiled models by latent size, and call counts."""

    original: object  # the UNet's bound forward
    family: Family
    compiled: dict = field(default_factory=dict)  # (latent height, latent width) -> an infer request
    folders: set = field(default_factory=set)  # the cache folders compiled from (kept by `evict`)
    calls: dict = field(default_factory=lambda: {"openvino": 0, "torch": 0})

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None, timestep_cond=None,
                attention_mask=None, cross_attention_kwargs=None, added_cond_kwargs=None,
                down_block_additional_residuals=None, mid_block_additional_residual=None,
                down_intrablock_additional_residuals=None, encoder_attention_mask=None, return_dict=True):
        import torch
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        request = self.compiled.get(tuple(sample.shape[-2:]))
        extras = (class_labels, timestep_cond, attention_mask, down_block_additional_residuals,
                  mid_block_additional_residual, down_intrablock_additional_residuals, encoder_attention_mask)
        added = added_cond_kwargs or {}
        plain = set(added) == ({"text_embeds", "time_ids"} if self.family == Family.SDXL else set())
        if (request is None or any(e is not None for e in extras) or cross_attention_kwargs or not plain
                or sample.dtype != torch.float32):
            self.calls["torch"] += 1
            return self.original(sample, timestep, encoder_hidden_states, class_labels=class_labels,
                                 timestep_cond=timestep_cond, attention_mask=attention_mask,
                                 cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
                                 down_block_additional_residuals=down_block_additional_residuals,
                                 mid_block_additional_residual=mid_block_additional_residual,
                                 down_intrablock_additional_residuals=down_intrablock_additional_residuals,
                                 encoder_attention_mask=encoder_attention_mask, return_dict=return_dict)
        self.calls["openvino"] += 1
        batch = sample.shape[0]
        steps = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(batch).contiguous()
        feed = {"sample": sample.contiguous().numpy(), "timestep": steps.numpy(),
                "encoder_hidden_states": encoder_hidden_states.float().contiguous().numpy()}
        if self.family == Family.SDXL:
            feed.update(text_embeds=added["text_embeds"].float().contiguous().numpy(),
                        time_ids=added["time_ids"].float().contiguous().numpy())
        out = torch.from_numpy(request.infer(feed)[0].copy())
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


def in_use() -> set[Path]:
    """The folders of this cache that UNets in this process run on (an eviction keeps them). A UNet attached
    under another $HAYAI_HOME (a test's, or one changed since) is not this cache's concern."""
    root = openvino_cache.root()
    return {folder for state in list(_ATTACHED) for folder in state.folders if folder.parent == root}


def ready(unet, width: int, height: int, *, vae_scale: int = 8) -> bool:
    """Whether `unet` runs on OpenVINO at `width` x `height` already."""
    state = getattr(unet, _ATTR, None)
    return state is not None and (height // vae_scale, width // vae_scale) in state.compiled


def attach(unet, family: Family, model_hash: str, width: int, height: int, *, threads: int,
           vae_scale: int = 8) -> dict | None:
    """Run `unet` on OpenVINO at `width` x `height` from now on: converted into the cache unless it is there,
    then compiled (seconds, at every load); after a conversion, the least recently used others are evicted
    to keep the cache under its cap. Returns what it did (an engine event: `evicted` names the folders
    removed), or None when it was attached at that size already."""
    if ready(unet, width, height, vae_scale=vae_scale):
        return None
    ov = _import()
    folder = cache_folder(model_hash, width, height)
    converted = None
    if not is_converted(model_hash, width, height):
        cap = openvino_cache.cap_bytes()  # (a bad $HAYAI_OPENVINO_CACHE_GB fails now, not after the conversion)
        converted = convert(unet, family, model_hash, width, height, vae_scale=vae_scale)
    else:
        openvino_cache.touch(folder)
    start = time.perf_counter()
    compiled = ov.Core().compile_model(folder / _XML, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                               "INFERENCE_NUM_THREADS": threads})
    compile_seconds = time.perf_counter() - start
    state = getattr(unet, _ATTR, None)
    if state is None:
        state = OpenVinoUNet(original=unet.forward, family=family)
        setattr(unet, _ATTR, state)
        unet.forward = state.forward
        _ATTACHED.add(state)
    state.compiled[(height // vae_scale, width // vae_scale)] = compiled.create_infer_request()
    state.folders.add(folder)
    event = {"event": "openvino", "size": f"{width}x{height}", "cache": str(folder),
             "converted_seconds": converted["seconds"] if converted else None, "compile_seconds": round(compile_seconds, 3)}
    evicted = openvino_cache.evict(cap, keep={folder} | in_use()) if converted else []
    if evicted:
        event.update(evicted=[{"folder": str(e.folder), "bytes": e.bytes} for e in evicted],
                     cache_cap_gb=cap / openvino_cache.GIB)
    return event


def detach(unet) -> None:
    """Back to PyTorch: the UNet's own forward, the compiled models released."""
    state = getattr(unet, _ATTR, None)
    if state is not None:
        _ATTACHED.discard(state)
        unet.__dict__.pop("forward", None)
        delattr(unet, _ATTR)


# Host memory an OpenVINO run holds beyond the plain run's, in bytes of the converted (float32) UNet: the
# compiled model and the CPU plugin's own copy of its weights, beside the torch UNet, which stays loaded for the
# calls it falls back on. Measured by benchmarks/openvino_memory.py (arch:sd15 at 256 px, 1 thread, our 2-core
# CPU; results/openvino_memory_cpu-2core-amd-epyc.json): peak 4.96 GiB plain, 11.50 GiB with the conversion
# cached (2.04x its 3.2 GiB), 12.14 GiB in the run that converts (2.24x); rounded up.
EXTRA_MEMORY = {"cached": 2.1, "converting": 2.3}


def extra_bytes(unet_params: int, *, converting: bool) -> int:
    """Host bytes an OpenVINO run needs beyond the plain run's, for a UNet of `unet_params` parameters."""
    return int(unet_params * 4 * EXTRA_MEMORY["converting" if converting else "cached"])


def left_out(blockers: tuple[str, ...]) -> str:
    """Why a request keeps the torch UNet: what it asks for acts inside it (LoRAs, UNet speed levers)."""
    return f"the converted UNet would leave out this request's {' and '.join(blockers)}"


def decide(measured, *, model_hash: str | None, family: Family, width: int, height: int, steps: int, images: int,
           on_cpu: bool, strategy=None, blockers: tuple[str, ...] = (), installed: bool | None = None,
           min_psnr_db: float, threads: int = 0, plan=None, unet_params: int | None = None) -> tuple[bool, str]:
    """Whether OpenVINO runs this request, and why: `measured` is `store.speed_measurements.nearest` for
    the model on this device; `blockers` what in the request keeps the torch UNet (LoRAs, UNet levers);
    `plan` (`memory.planner.Plan` on this CPU) and `unet_params`, when given, whether the host memory the
    plain run leaves holds what OpenVINO adds (`extra_bytes`)."""
    installed = available() if installed is None else installed
    if not installed:
        return False, f"the [openvino] extra is not installed ({INSTALL})"
    if not on_cpu:
        return False, "it runs on the CPU, and this run has an accelerator"
    if strategy is not None and (strategy.placement != "cpu" or strategy.dtype != "float32" or strategy.split_batch):
        return False, f"{strategy.name} is not the whole-batch float32 CPU run it replaces"
    if family not in FAMILIES:
        return False, f"it converts UNet models ({', '.join(f.value for f in FAMILIES)}), not {family.value}"
    if blockers:
        return False, left_out(blockers)
    by_lever = {m.lever: m for m in measured}
    exact, lever = by_lever.get("exact"), by_lever.get("openvino")
    if exact is None or lever is None or model_hash is None:
        return False, "its per-step time is not measured here at this size (`hayai bench speed --levers openvino`)"
    if lever.psnr_db is None or lever.psnr_db < min_psnr_db:
        return False, "its pixels were not compared or differ from the exact run's"
    if is_converted(model_hash, width, height):
        to_pay = 0.0
    else:
        to_pay = conversion_seconds(model_hash)
        if to_pay is None:
            return False, "its conversion was never timed here (`hayai bench speed --levers openvino` times it)"
    if plan is not None and unet_params:
        estimate = next((e for e in plan.candidates if e.strategy == strategy), plan.chosen)
        factor = EXTRA_MEMORY["converting" if to_pay > 0 else "cached"]
        room, need = plan.budget_bytes - estimate.peak_bytes, extra_bytes(unet_params, converting=to_pay > 0)
        if need > room:
            return False, (f"it would hold about {need / GIB:.1f} GiB of host memory beyond the plain run's "
                           f"({factor:g}x the UNet's float32 weights), and {max(0, room) / GIB:.1f} GiB is left "
                           "beside it")
    return pays_back(steps=steps, images=images, step_seconds=step_seconds(exact, width, height, threads),
                     ratio=lever.denoise_ratio, owed_seconds=to_pay, cost="conversion", paid="already converted")
