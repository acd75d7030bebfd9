"""A .safetensors file's header, read without the tensors, and checked against the file's length."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["safetensors_header"]


def safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata from a .safetensors header, without reading tensors; ValueError when the
    file is not as long as its header says (a download or copy cut short)."""
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"implausible header size {size}")
        header = json.loads(file.read(size))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    try:
        data = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise ValueError("not a safetensors header (a tensor without data_offsets)") from None
    actual = path.stat().st_size - 8 - size
    if actual != data:
        state = "truncated" if actual < data else "longer than its header says"
        raise ValueError(f"damaged file: {state} ({actual} bytes of tensors, the header describes {data}); "
                         "download or copy it again")
    return list(header), metadata
