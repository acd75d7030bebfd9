"""A model's card: the `hayai_model.json` a model folder may carry (the built-in model does).

Its `recommended` block (steps, cfg_scale, sampler, schedule_type) fills what a request leaves unset, so
a model that draws best at CFG 2 gets CFG 2 unless the user asks otherwise. Read from the folder alone,
before any weights load.
"""

from __future__ import annotations

import json

__all__ = ["recommended_settings", "CARD_FILE"]

CARD_FILE = "hayai_model.json"
_FIELDS = ("steps", "cfg_scale", "sampler", "schedule_type")


def recommended_settings(source) -> dict:
    """The card's recommended request fields for `source` (a ModelSource); {} when it has no card."""
    if source.kind != "folder":
        return {}
    path = source.path / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    recommended = card.get("recommended") if isinstance(card, dict) else None
    if not isinstance(recommended, dict):
        return {}
    return {name: recommended[name] for name in _FIELDS if name in recommended}
