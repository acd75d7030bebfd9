"""SHA-256 of model files, cached by (resolved path, size, mtime_ns) in the `file_hashes` table.

Checkpoints are gigabytes, so a hash is computed once per file version. A1111 infotext uses
prefixes of it: "Model hash" is the first 10 hex digits, LoRA hashes the first 12.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

__all__ = ["CHUNK_BYTES", "FileKey", "file_key", "compute_sha256", "lookup_sha256", "save_sha256"]

CHUNK_BYTES = 1 << 20  # read 1 MiB at a time: constant memory for any file size

FileKey = tuple[str, int, int]  # (resolved path, size, mtime_ns)


def file_key(path: Path) -> FileKey:
    """What identifies one version of a file; raises FileNotFoundError if it is missing."""
    resolved = Path(path).expanduser().resolve()
    stat = os.stat(resolved)
    return str(resolved), stat.st_size, stat.st_mtime_ns


def compute_sha256(path: Path) -> str:
    """The file's SHA-256 as 64 lowercase hex digits, read in `CHUNK_BYTES` chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def lookup_sha256(conn: sqlite3.Connection, key: FileKey) -> str | None:
    """The cached hash for exactly this file version, or None."""
    row = conn.execute(
        "SELECT sha256 FROM file_hashes WHERE path = ? AND size = ? AND mtime_ns = ?", key
    ).fetchone()
    return row[0] if row else None


def save_sha256(conn: sqlite3.Connection, key: FileKey, sha256: str, *, now: str) -> None:
    """Cache `sha256` for this file version, replacing whatever was cached for the path."""
    conn.execute(
        "INSERT INTO file_hashes (path, size, mtime_ns, sha256, hashed_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
        "sha256 = excluded.sha256, hashed_at = excluded.hashed_at",
        (*key, sha256, now),
    )
