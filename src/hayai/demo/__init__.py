"""The built-in demo model and the world it was trained on.

- `shapes`: the procedural dataset (scenes, captions, deterministic renders);
- `adherence`: reads an image back into attributes and scores it against its prompt;
- `architecture`: the demo pipeline's configs, vocabulary and tokenizer;
- `train`: the training loop that made the shipped weights (`scripts/train_demo_model.py`).

The shipped model is a diffusers folder at `BUILTIN_MODEL` (package data). Importing this package
imports neither torch nor diffusers.
"""

from __future__ import annotations

from hayai.models.builtin import BUILTIN_MODEL, BUILTIN_MODEL_NAME

__all__ = ["BUILTIN_MODEL", "BUILTIN_MODEL_NAME"]
