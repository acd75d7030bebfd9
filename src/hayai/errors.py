"""The errors hayai raises for things a user can fix.

Every message names the problem and the fix. Front ends print `str(error)` on one line and exit
with status 2 (bad input) or 1 (everything else); they never show a traceback for these.
"""

from __future__ import annotations

__all__ = ["HayaiError", "RequestError", "ModelError", "ModelNotFoundError", "UnsafeCheckpointError", "DiskFullError",
           "Interruption", "disk_full", "damaged_safetensors"]


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


class DiskFullError(HayaiError):
    """A write failed because the disk (or the user's quota) is full."""


class Interruption(Exception):
    """A run stopped on purpose, not failed (`hayai.generation.options.Cancelled`): the history records it
    as interrupted, as it does Ctrl-C."""


def damaged_safetensors(path) -> str:
    """What to say of a .safetensors file its parser refuses (a download cut short, or another kind of file):
    the parser's own words ("header too large", "invalid header length") tell a user nothing."""
    return f"{path}: this file is incomplete or not a safetensors file; download it again"


def disk_full(error: BaseException, where: object = None) -> DiskFullError | None:
    """A DiskFullError naming `where` (or the file the error names) when `error` is an out-of-space failure:
    OSError ENOSPC/EDQUOT, SQLite's "database or disk is full", safetensors' "No space left on device"."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        where = where or error.filename
    elif not any(text in str(error) for text in ("database or disk is full", "No space left on device", "StorageFull")):
        return None
    at = f" at {where}" if where else ""
    return DiskFullError(f"disk full{at}: free some space (or write somewhere else) and run again")
