"""The LoRA catalog: LoRA files found where the user keeps them, and lookup by name.

Folders, in order: hayai's own `$HAYAI_HOME/loras`, then for every folder added with `hayai models add`
its A1111 (`models/Lora`) or ComfyUI (`models/loras`) LoRA folder; a plain added folder is searched too,
but there only files whose tensor names are a LoRA's count (it also holds checkpoints). Subfolders are
searched. A LoRA is named by its file stem, as in A1111's `<lora:NAME:W>`, or by the `ss_output_name`
alias kohya writes into it, or by a path.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

from hayai import paths
from hayai.lora.formats import LoraError, LoraNotFoundError, detect_format
from hayai.models.catalog import install_subfolders
from hayai.models.headers import safetensors_header as _header

__all__ = ["LoraEntry", "find_lora", "list_loras", "lora_folders", "loras_dir"]

LORA_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")


def loras_dir() -> Path:
    """hayai's own LoRA folder."""
    return paths.hayai_home() / "loras"


@dataclass(frozen=True)
class LoraEntry:
    name: str  # file stem: what `<lora:NAME>` and `--lora NAME` use
    path: Path
    folder: Path  # the catalog folder it was found under
    size_bytes: int
    alias: str | None = None  # kohya's ss_output_name, when it differs from the name
    problem: str | None = None  # why it cannot be used (pickle file, unreadable header)
    metadata: dict = field(default_factory=dict, repr=False, compare=False)  # its safetensors header's, as read

    def to_dict(self) -> dict:
        return {
            "name": self.name, "path": str(self.path), "folder": str(self.folder), "size_bytes": self.size_bytes,
            "alias": self.alias, "problem": self.problem,
        }


def lora_folders(store=None) -> list[tuple[Path, bool]]:
    """(folder, whole) pairs: `whole` folders hold LoRAs only; others (plain added folders) are filtered."""
    store = store if store is not None else _store()
    folders: list[tuple[Path, bool]] = [(loras_dir(), True)]
    for entry in store.catalog_entries():
        if entry.kind != "folder":
            continue
        root = Path(entry.path)
        subfolders = install_subfolders(root, "loras")
        if subfolders != [root]:
            folders.extend((folder, True) for folder in subfolders)
        elif install_subfolders(root, "checkpoints") == [root]:
            folders.append((root, False))  # a plain folder of models (an install without a LoRA folder is skipped)
    unique: dict[Path, bool] = {}
    for folder, whole in folders:
        unique.setdefault(folder, whole)
    return list(unique.items())


def _store():
    from hayai.store import Store

    return Store()




def _entry(path: Path, folder: Path, whole: bool) -> LoraEntry | None:
    size = path.stat().st_size
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not whole:
            return None
        return LoraEntry(path.stem, path, folder, size, problem="pickle file: hayai reads .safetensors LoRAs only")
    try:
        keys, metadata = _header(path)
        detect_format(keys)
    except (OSError, ValueError, UnicodeDecodeError, LoraError) as exc:
        if not whole:
            return None  # a checkpoint or something else in a mixed folder
        return LoraEntry(path.stem, path, folder, size, problem=str(exc))
    alias = metadata.get("ss_output_name")
    return LoraEntry(path.stem, path, folder, size, alias if alias and alias != path.stem else None, metadata=metadata)


def list_loras(store=None) -> list[LoraEntry]:
    """Every LoRA in the catalog folders (recursively, sorted by folder then path)."""
    entries: list[LoraEntry] = []
    seen: set[Path] = set()
    for folder, whole in lora_folders(store):
        if not folder.is_dir():
            continue
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            if not whole and (Path(root) / "model_index.json").is_file():
                dirs.clear()  # a diffusers model folder
                continue
            for name in sorted(files):
                path = Path(root) / name
                if path.suffix.lower() not in LORA_SUFFIXES + PICKLE_SUFFIXES or path.resolve() in seen:
                    continue
                entry = _entry(path, folder, whole)
                if entry is not None:
                    seen.add(path.resolve())
                    entries.append(entry)
    return entries


def find_lora(name: str, store=None, *, short_hash: str | None = None) -> Path:
    """The file a LoRA name means: a path, a file stem, an `ss_output_name` alias, or (with `short_hash`)
    the file whose A1111 hash (`a1111_lora_hash`, as the infotext records it) starts with it. Raises `LoraNotFoundError` with close names otherwise."""
    path = Path(name).expanduser()
    if path.suffix.lower() in LORA_SUFFIXES + PICKLE_SUFFIXES and path.is_file():
        return path.resolve()
    entries = list_loras(store)
    for match in (
        lambda e: e.name == name,
        lambda e: e.alias == name,
        lambda e: e.name.lower() == name.lower(),
    ):
        found = [e for e in entries if match(e)]
        if found:
            return _usable(found[0])
    if short_hash:
        from hayai.lora.formats import a1111_lora_hash, lora_hashes

        for entry in entries:  # the hash the engine writes: a stored one costs a header read, not a hash
            if entry.problem is None:
                _, metadata = _header(entry.path)
                if a1111_lora_hash(metadata, lambda: lora_hashes(entry.path)[1]).lower().startswith(short_hash.lower()):
                    return entry.path
    names = [e.name for e in entries]
    close = difflib.get_close_matches(name, names, n=3)
    folders = ", ".join(str(f) for f, _ in lora_folders(store))
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
        f"; LoRAs found: {', '.join(names[:20])}" if names else f"; no LoRAs found in {folders}"
    )
    raise LoraNotFoundError(f"LoRA {name!r} is not a .safetensors path or a LoRA in the catalog{hint}")


def _usable(entry: LoraEntry) -> Path:
    if entry.problem:
        raise LoraError(f"LoRA {entry.name!r} ({entry.path}) cannot be used: {entry.problem}")
    return entry.path
