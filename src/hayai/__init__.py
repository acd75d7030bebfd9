"""hayai: fast local image generation with diffusion models.

    from hayai import Engine, GenerationRequest
    result = Engine().generate(GenerationRequest("a red circle", steps=20, seed=42))
    print(result.images[0].path, result.timings)

Importing hayai loads no model, probes no device and imports no torch: names resolve on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "GenerationRequest",
    "RunOptions",
    "CancelToken",
    "GenerationResult",
    "GeneratedImage",
    "Family",
    "Catalog",
    "Store",
    "HayaiError",
    "RequestError",
    "ModelError",
    "ModelNotFoundError",
    "UnsafeCheckpointError",
    "format_infotext",
    "parse_infotext",
    "read_image_metadata",
    "make_plan",
    "parse_axis",
    "run_sweep",
    "explore",
    "refine_request",
    "TrainConfig",
    "train_lora",
]

_EXPORTS = {
    "Engine": "hayai.generation.engine",
    "GenerationResult": "hayai.generation.engine",
    "GeneratedImage": "hayai.generation.engine",
    "GenerationRequest": "hayai.generation.request",
    "RunOptions": "hayai.generation.options",
    "CancelToken": "hayai.generation.options",
    "Family": "hayai.models.families",
    "Catalog": "hayai.models.catalog",
    "Store": "hayai.store",
    "HayaiError": "hayai.errors",
    "RequestError": "hayai.errors",
    "ModelError": "hayai.errors",
    "ModelNotFoundError": "hayai.errors",
    "UnsafeCheckpointError": "hayai.errors",
    "format_infotext": "hayai.generation.infotext",
    "parse_infotext": "hayai.generation.infotext",
    "read_image_metadata": "hayai.generation.imagefile",
    "make_plan": "hayai.sweep",
    "parse_axis": "hayai.sweep",
    "run_sweep": "hayai.sweep",
    "explore": "hayai.sweep",
    "refine_request": "hayai.sweep",
    "TrainConfig": "hayai.training.config",
    "train_lora": "hayai.training.loop",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hayai' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
