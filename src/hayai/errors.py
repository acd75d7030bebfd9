"""The errors hayai raises for things a user can fix.

Every message names the problem and the fix. Front ends print `str(error)` on one line and exit
with status 2 (bad input) or 1 (everything else); they never show a traceback for these.
"""

from __future__ import annotations

__all__ = ["HayaiError", "RequestError", "ModelError", "ModelNotFoundError", "UnsafeCheckpointError"]


class HayaiError(Exception):
    """Base class: something the user can act on."""

    exit_code = 1


class RequestError(HayaiError, ValueError):
    """A request field has a bad value. The message names the field and the value."""

    exit_code = 2


class ModelError(HayaiError):
    """A model cannot be read or is of an unsupported kind."""

    exit_code = 2


class ModelNotFoundError(ModelError):
    """No model answers to the name the user gave."""


class UnsafeCheckpointError(ModelError):
    """A pickle checkpoint (.ckpt/.pt/.bin) was refused because loading it can run arbitrary code."""
