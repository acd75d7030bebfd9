"""LoRA training: a config, a loop you can read in one sitting, checkpoints that resume exactly, and files
every tool loads.

    from hayai.training import TrainConfig, train_lora
    result = train_lora(TrainConfig(dataset="my_pictures", model="my-model", output_name="my-style", trigger_word="mystyle"))
    print(result.lora_path, result.validation)          # the LoRA is in the catalog: <lora:my-style:0.8>
    train_lora(TrainConfig(output_name="my-style"), resume=True)   # after Ctrl-C: continues exactly

Importing this package imports no torch (the CLI reads the config's fields from it); names load on use.
"""

from __future__ import annotations

__all__ = ["TrainConfig", "TrainEvent", "TrainResult", "TrainingDiverged", "train_lora"]

_EXPORTS = {
    "TrainConfig": "hayai.training.config",
    "TrainEvent": "hayai.training.loop",
    "TrainResult": "hayai.training.loop",
    "TrainingDiverged": "hayai.training.loop",
    "train_lora": "hayai.training.loop",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hayai.training' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
