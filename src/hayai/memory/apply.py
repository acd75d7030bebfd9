"""Turning a `Strategy` into diffusers calls: the one place that does.

`apply_strategy(pipe, strategy)` takes a freshly loaded pipeline (weights on the CPU) and places it:
`.to(device, dtype)`, `enable_model_cpu_offload`, `enable_group_offload`, `enable_sequential_cpu_offload`,
`enable_layerwise_casting`, VAE tiling and slicing, attention slicing, and the batch split;
`apply_execution(pipe, names)` puts on (and takes off) the execution levers (channels-last, regional
torch.compile, OpenVINO). Strategies are applied once to a fresh pipeline; stepping down after an
out-of-memory error reloads and applies anew rather than trying to peel hooks off (reloading from the page
cache takes seconds, a half-undone offload can take a run).
"""

from __future__ import annotations

import gc
from dataclasses import fields, is_dataclass

from hayai.memory.strategies import VAE_TILE_PX, Strategy
from hayai.models.components import denoiser_of

__all__ = ["apply_strategy", "apply_execution", "return_to_host", "is_out_of_memory", "free_memory", "split_denoiser_batch",
           "encode_device", "without_text_encoders"]


def _text_encoders(pipe):
    return [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3")) if m is not None]


def apply_strategy(pipe, strategy: Strategy):
    """Place `pipe` as `strategy` says. Returns the pipeline.

    Everything that changes bytes happens on the CPU first (dtype casts, fp8 storage), and each component
    then moves straight to where the strategy keeps it, so the accelerator never holds more than the plan
    says (no whole pipeline moved over and text encoders moved back).
    """
    import torch

    dtype = getattr(torch, strategy.dtype)
    device = torch.device(strategy.device)
    placement = strategy.placement
    denoiser = denoiser_of(pipe)
    encoders = _text_encoders(pipe)
    host_encoders = placement in ("te_offload", "te_cpu")
    for module in _modules(pipe):
        # half precision on a CPU is slow or unsupported: encoders that run there compute in fp32
        wanted = torch.float32 if placement == "te_cpu" and any(module is e for e in encoders) else dtype
        if module.dtype != wanted:  # (diffusers warns on a same-dtype cast of models that keep fp32 modules)
            module.to(dtype=wanted)
    if strategy.fp8_storage:  # on the CPU, so the denoiser is never on the device in the compute dtype
        denoiser.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    if strategy.split_batch:  # before any offload hook, which keeps (and restores) the forward it found
        split_denoiser_batch(denoiser)
    if placement in ("resident", "cpu"):
        pipe.to(device)
    elif host_encoders:
        if placement == "te_offload":
            _stream_layers(encoders, device)
        for module in _modules(pipe):
            if not any(module is e for e in encoders):
                module.to(device)
    elif placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif placement == "group_offload":
        _group_offload(pipe, device)
    elif placement == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        raise ValueError(f"strategy.placement={placement!r} is unknown")
    if strategy.vae_tiling:
        pipe.vae.enable_tiling()
        pipe.vae.enable_slicing()
        if pipe.vae.tile_sample_min_size > VAE_TILE_PX:
            pipe.vae.tile_sample_min_size = VAE_TILE_PX
            pipe.vae.tile_latent_min_size = VAE_TILE_PX // pipe.vae_scale_factor
    if strategy.attention_slicing and hasattr(pipe, "enable_attention_slicing") and getattr(pipe, "unet", None) is not None:
        pipe.enable_attention_slicing("auto")
    return pipe


def apply_execution(pipe, names: frozenset[str], *, openvino: dict | None = None) -> list[dict]:
    """Put the execution levers `names` (hayai.speed.execution) on `pipe` and take the others off, in place:
    `channels_last` converts the denoiser's 4-D weights to channels-last memory format, or back; `compile`
    compiles its repeated blocks (at their first call), which cannot be taken off: a compiled pipeline that
    must run without it is loaded again by the caller; `openvino` runs the UNet on OpenVINO at the size
    `openvino` names (`hayai.speed.openvino.attach`'s arguments: family, model_hash, width, height,
    threads), converting it once into the cache. Returns what was done worth recording (a compilation set
    up, a conversion)."""
    import torch

    from hayai.speed import openvino as ov_lever
    from hayai.speed import regional_compile

    denoiser = denoiser_of(pipe)
    fmt = torch.channels_last if "channels_last" in names else torch.contiguous_format
    denoiser.to(memory_format=fmt)
    done = []
    if "compile" in names:
        done.append(regional_compile.compile_blocks(denoiser))
    elif regional_compile.is_compiled(denoiser):
        raise ValueError("this pipeline's denoiser is compiled, and torch cannot undo that: load it again to run "
                         "without the compile lever")
    if "openvino" not in names:
        ov_lever.detach(denoiser)
    elif openvino is None:
        raise ValueError("the openvino lever needs the model and size to compile for")
    else:
        done.append(ov_lever.attach(denoiser, vae_scale=pipe.vae_scale_factor, **openvino))
    return [event for event in done if event]


def return_to_host(pipe, strategy: Strategy, load_dtype: str) -> bool:
    """Undo `strategy`'s placement: every component back on the CPU, so the accelerator is free for
    another pipeline. Returns False, moving nothing, when the placement cannot be undone exactly.

    Only a plain placement can: `resident` and `te_cpu` moved whole modules and cast them from the load
    dtype to the strategy's, which leaves the values as loaded when that cast was exact (the same dtype,
    or float32). Offload hooks, fp8 storage, the batch split's forward and the VAE and attention switches
    stay on a pipeline; such a pipeline is dropped and loaded again when next wanted.
    """
    plain = Strategy(placement=strategy.placement, device=strategy.device, dtype=strategy.dtype)
    if strategy != plain or strategy.placement not in ("resident", "te_cpu") or strategy.dtype not in (load_dtype, "float32"):
        return False
    pipe.to("cpu")  # (the dtypes stay: placing it again casts each module to the strategy's, exactly)
    return True


def _modules(pipe) -> list:
    import torch

    return [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]


def _stream_layers(modules, device) -> None:
    """Keep `modules` in host RAM and stream them in layer by layer (prefetched on a CUDA stream)."""
    from diffusers.hooks import apply_group_offloading

    for module in modules:
        apply_group_offloading(module, onload_device=device, offload_type="leaf_level", use_stream=device.type == "cuda")


def _group_offload(pipe, device) -> None:
    """The denoiser streams block by block; text encoders and VAE layer by layer.

    diffusers' block level takes a model's top-level ModuleLists as blocks and keeps everything else
    together as one group: right for a UNet or MMDiT, but a T5 encoder has no top-level list and would
    be onloaded whole (9.5 GB for T5-XXL). Leaf level streams those with prefetching instead.
    """
    from diffusers.hooks import apply_group_offloading

    stream = device.type == "cuda"
    denoiser = denoiser_of(pipe)
    for module in [*_text_encoders(pipe), denoiser, pipe.vae]:
        level = "block_level" if module is denoiser else "leaf_level"
        apply_group_offloading(module, onload_device=device, offload_type=level,
                               num_blocks_per_group=1 if level == "block_level" else None, use_stream=stream)


def encode_device(pipe, strategy: Strategy) -> str | None:
    """Where prompts must be encoded when the pipeline cannot do it itself (text encoders on the CPU)."""
    return "cpu" if strategy.placement == "te_cpu" else None


def without_text_encoders(pipe):
    """`pipe` without its text encoders (the same other components), for a call given its embeddings.

    diffusers' SD1/SD2/SDXL pipelines cast given embeddings to their text encoder's dtype, and the latents
    follow: with the encoders in fp32 on the CPU (`te_cpu`) and a half-precision denoiser, the denoiser
    would get fp32 inputs. Without text encoders the pipeline takes the denoiser's dtype instead.
    """
    from hayai.models.assemble import assemble

    return assemble(pipe, text_encoder=None, text_encoder_2=None, text_encoder_3=None)


def split_denoiser_batch(module) -> None:
    """Run `module` on one sample at a time: the CFG halves and batch items each get their own call.

    The activations of one sample are all that is alive at once; the result is the concatenation, the
    same numbers up to float rounding of batched kernels.
    """
    original = module.forward

    def forward(*args, **kwargs):
        sample = args[0] if args else next(v for v in kwargs.values() if hasattr(v, "shape"))
        count = sample.shape[0]
        if count == 1:
            return original(*args, **kwargs)
        outputs = [original(*_take(args, i, count), **_take(kwargs, i, count)) for i in range(count)]
        return _concat(outputs)

    module.forward = forward


def _take(value, index: int, count: int):
    """Sample `index` of every batch-shaped tensor in a nest of args (tuples, lists, dicts)."""
    if hasattr(value, "shape") and value.ndim > 0 and value.shape[0] == count:
        return value[index : index + 1]
    if isinstance(value, dict):
        return {k: _take(v, index, count) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_take(v, index, count) for v in value)
    return value


def _concat(outputs):
    import torch

    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, tuple):
        return tuple(_concat([o[i] for o in outputs]) for i in range(len(first)))
    if is_dataclass(first):  # diffusers' BaseOutput
        return type(first)(**{f.name: _concat([getattr(o, f.name) for o in outputs]) for f in fields(first)})
    return first


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA/ROCm/MPS/CPU allocation failures, which PyTorch raises under different types and words."""
    import torch

    # torch.OutOfMemoryError is torch >= 2.5's name; torch.cuda.OutOfMemoryError (the same class) is older
    if isinstance(error, getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
