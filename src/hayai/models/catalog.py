"""The model catalog: which models the user has, found where they already are.

Models live in hayai's own folder (`$HAYAI_HOME/models`), in folders the user added, or in existing
A1111 / ComfyUI installs, which are read in place (`models/Stable-diffusion`, `models/checkpoints`);
nothing is copied or moved. A model is named by its file stem or folder name, by A1111's title
"name [hash10]", by a hash prefix, by a path, or by a hub id found in the local Hugging Face cache.

Registrations live in the SQLite store; the catalog itself is recomputed from the disk each time, so
it never disagrees with what is there.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from hayai import paths
from hayai.errors import HayaiError, ModelError, ModelNotFoundError
from hayai.files import size_bytes
from hayai.models.builtin import BUILTIN_MODEL, BUILTIN_MODEL_NAME
from hayai.models.families import Family
from hayai.models.loading import (
    ARCH_PREFIX,
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    ModelSource,
    looks_like_hub_id,
    source_from_architecture,
    source_from_hub_cache,
    source_from_path,
)

__all__ = [
    "Catalog", "ModelEntry", "PLACEHOLDER_NAME", "builtin_source", "install_subfolders", "model_hash", "placeholder_source",
    "cached_source_hash", "source_hash",
]

PLACEHOLDER_NAME = "placeholder-random-sd1"

# Where known UIs keep their files, relative to their install root, per kind of file.
_INSTALL_LAYOUTS = {
    "checkpoints": ("models/Stable-diffusion", "models/checkpoints"),  # A1111/Forge, ComfyUI
    "loras": ("models/Lora", "models/loras"),
}


def install_subfolders(root: Path, kind: str = "checkpoints") -> list[Path]:
    """The folders of `kind` inside an A1111/Forge or ComfyUI install root; [root] for a plain folder."""
    found = [root / sub for sub in _INSTALL_LAYOUTS[kind] if (root / sub).is_dir()]
    return found or [root]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    kind: str  # "single_file" or "folder"
    family: Family | None  # None when the file is not a model hayai can run (see `problem`)
    size_bytes: int
    origin: str  # the folder it was found in, or "added"
    problem: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "family": self.family.value if self.family else None,
            "size_bytes": self.size_bytes,
            "origin": self.origin,
            "problem": self.problem,
        }


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in SAFE_SUFFIXES + PICKLE_SUFFIXES]


def model_hash(store, path: Path) -> str:
    """sha256 of a checkpoint file (A1111's "Model hash" is its first 10 hex digits).

    A diffusers folder has no single file; its hash is the sha256 of the sorted lines
    "relative/path sha256" of its weight files, so it changes exactly when a weight changes.
    """
    return _hash_of(Path(path), store.file_sha256)


def _hash_of(path: Path, sha256_of) -> str | None:
    """`model_hash` with each file's sha256 from `sha256_of` (None: not known, so neither is the hash)."""
    if path.is_file():
        return sha256_of(path)
    lines = []
    for file in _weight_files(path):
        sha256 = sha256_of(file)
        if sha256 is None:
            return None
        lines.append(f"{file.relative_to(path).as_posix()} {sha256}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def source_hash(store, source: ModelSource) -> str:
    """`model_hash` of a source's files; an architecture (no files) hashes its name and weight seed."""
    if source.kind == "architecture":
        return hashlib.sha256(f"hayai {source.name} random weights seed 0".encode()).hexdigest()
    return model_hash(store, source.path)


def cached_source_hash(store, source: ModelSource) -> str | None:
    """`source_hash` from the store's hash cache alone (never reads a weight file): None when a file was not
    hashed as it is now, that is when no run here used the model since it last changed."""
    if source.kind == "architecture":
        return source_hash(store, source)
    return _hash_of(Path(source.path), store.cached_sha256)


class Catalog:
    def __init__(self, store) -> None:
        self.store = store

    # -- what is there ---------------------------------------------------------------------------
    def folders(self) -> list[Path]:
        folders = [paths.models_dir()]
        for entry in self.store.catalog_entries():
            if entry.kind == "folder":
                folders.extend(install_subfolders(entry.path))
        return folders

    def entries(self) -> list[ModelEntry]:
        entries: dict[Path, ModelEntry] = {}
        for folder in self.folders():
            for candidate in _candidates(folder):
                entries.setdefault(candidate, _entry(candidate, str(folder)))
        for registered in self.store.catalog_entries():
            if registered.kind == "model" and registered.path not in entries:
                entries[registered.path] = _entry(registered.path, "added")
        return sorted(entries.values(), key=lambda e: (e.name.lower(), str(e.path)))

    # -- changing it -----------------------------------------------------------------------------
    def add(self, path: Path) -> str:
        """Register a model (file or diffusers folder) or a folder of models / a UI install."""
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise ModelNotFoundError(f"{path} does not exist")
        if path.is_file() or (path / "model_index.json").is_file():
            entry = _entry(path, "added")
            if entry.problem and not _is_pickle(path):
                raise ModelError(f"{path} is not a model hayai can run: {entry.problem}")
            added = self.store.add_catalog_entry(path, "model")
            what = entry.family.value if entry.family else "pickle checkpoint: generating with it needs --allow-pickle"
            return f"{'added' if added else 'already added'}: model {entry.name} ({what}) at {path}"
        added = self.store.add_catalog_entry(path, "folder")
        scanned = ", ".join(str(p) for p in install_subfolders(path))
        broken = [e for e in self.entries() if e.problem and e.path.is_relative_to(path)]
        unusable = "".join(f"\n  cannot be used (never chosen as the default): {e.name}: {e.problem}" for e in broken)
        return f"{'added' if added else 'already added'}: folder {path} (models are read from {scanned}){unusable}"

    def remove(self, name_or_path: str) -> str:
        """Forget a registration. Never deletes the user's files."""
        path = Path(name_or_path).expanduser()
        if not path.exists():
            matches = [e for e in self.entries() if e.origin == "added" and e.name == name_or_path]
            if not matches:
                added = [e.name for e in self.entries() if e.origin == "added"] + [
                    str(e.path) for e in self.store.catalog_entries() if e.kind == "folder"
                ]
                raise ModelNotFoundError(
                    f"nothing added under {name_or_path!r}; added models and folders: {', '.join(added) or 'none'}"
                )
            path = matches[0].path
        if not self.store.remove_catalog_entry(path.resolve()):
            raise ModelNotFoundError(
                f"{path} was not added with `hayai models add` (files in {paths.models_dir()} or in an added folder "
                "are found by scanning; move or delete them yourself)"
            )
        return f"removed {path} from the catalog (its files are untouched)"

    # -- naming a model --------------------------------------------------------------------------
    def resolve(self, name: str | None, *, allow_pickle: bool = False, config: str | None = None) -> ModelSource:
        """The model a request names (see the module docstring for the forms a name may take).

        `arch:sd15`, `arch:sdxl` and `arch:sd35m` name the real architectures with random weights.
        """
        if name is None:
            return self.default_source()
        if name.startswith(ARCH_PREFIX):
            return source_from_architecture(name)
        path = Path(name).expanduser()
        if path.exists():
            return source_from_path(path, allow_pickle=allow_pickle, config=Path(config) if config else None)
        entry = self._find(name)
        if entry is not None:
            if _is_pickle(entry.path):  # let the loader's own refusal (UnsafeCheckpointError) through
                return source_from_path(entry.path, allow_pickle=allow_pickle, config=Path(config) if config else None)
            if entry.problem:
                raise ModelError(f"model {entry.name!r} ({entry.path}) cannot be used: {entry.problem}")
            return source_from_path(entry.path, allow_pickle=allow_pickle, config=Path(config) if config else None)
        if name == PLACEHOLDER_NAME:
            return placeholder_source()
        if name == BUILTIN_MODEL_NAME and builtin_source() is not None:
            return builtin_source()
        if Path(name).suffix.lower() in (*SAFE_SUFFIXES, *PICKLE_SUFFIXES) or "\\" in name or name.startswith(("/", "~", ".")):
            raise ModelNotFoundError(f"model={name!r}: file not found")
        if looks_like_hub_id(name):
            return source_from_hub_cache(name)
        names = [e.name for e in self.entries()]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
            f"; installed: {', '.join(names)}" if names else "; no models are installed (see `hayai models add`)"
        )
        raise ModelNotFoundError(f"model={name!r} is not a path, an installed model or a cached hub id{hint}")

    def _find(self, name: str) -> ModelEntry | None:
        entries = self.entries()
        title = name.rsplit(" [", 1)[0] if name.endswith("]") else name  # A1111 title "name [hash10]"
        for entry in entries:
            if title in (entry.name, entry.path.name):
                return entry
        if len(name) >= 8 and all(c in "0123456789abcdef" for c in name.lower()):
            for entry in entries:
                cached = self.store.cached_sha256(entry.path) if entry.kind == "single_file" else None
                if cached and cached.startswith(name.lower()):
                    return entry
        return None

    def default_source(self) -> ModelSource:
        """No model named: the last one used, else the only/first installed, else the built-in demo model
        (else, in a checkout whose demo model is not trained yet, the random placeholder)."""
        usable = [e for e in self.entries() if e.problem is None]
        if not usable:
            return builtin_source() or placeholder_source()
        by_name = {e.name: e for e in usable}
        last_used = [run.model for run in self.store.runs(limit=20, status="ok", kind="generate")]
        chosen = next((by_name[name] for name in last_used if name in by_name), usable[0])
        return source_from_path(chosen.path)


def _candidates(folder: Path):
    """Model files and diffusers folders under `folder`, recursively as A1111 does; the files inside a
    diffusers folder belong to it and are not listed on their own, and a folder of one diffusers component
    (a config.json without model_index.json: a VAE, the TAESDs previews use from models/VAE-approx) is no
    model at all."""
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        if (root_path / "model_index.json").is_file():
            dirs.clear()
            yield root_path
            continue
        if (root_path / "config.json").is_file():
            dirs.clear()
            continue
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in SAFE_SUFFIXES + PICKLE_SUFFIXES:
                yield root_path / name


def _is_pickle(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def _entry(path: Path, origin: str) -> ModelEntry:
    kind = "folder" if path.is_dir() else "single_file"
    try:
        source = source_from_path(path, allow_pickle=False)
        family, problem = source.family, None
    except HayaiError as exc:
        family, problem = None, str(exc)
    name = path.name if kind == "folder" else path.stem
    return ModelEntry(name, path, kind, family, size_bytes(path), origin, problem)


def builtin_source() -> ModelSource | None:
    """The demo model shipped inside the package (`hayai.demo.BUILTIN_MODEL`), if this install has it."""
    if not (BUILTIN_MODEL / "model_index.json").is_file():
        return None
    return ModelSource("folder", BUILTIN_MODEL, Family.SD1, BUILTIN_MODEL_NAME)


def placeholder_source() -> ModelSource:
    """A tiny random-weight SD1 pipeline, written once under the cache folder.

    It exists so a fresh install can run end to end with nothing downloaded; its images are noise.
    """
    from hayai.models.tiny import save_tiny_pipeline

    folder = paths.cache_dir() / PLACEHOLDER_NAME
    marker = folder / "hayai_placeholder.json"
    if not marker.is_file():
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        save_tiny_pipeline(Family.SD1, tmp, seed=0)
        (tmp / "hayai_placeholder.json").write_text(json.dumps({"family": "sd1", "seed": 0, "random_weights": True}))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    return ModelSource("folder", folder, Family.SD1, PLACEHOLDER_NAME)


def is_placeholder(source: ModelSource) -> bool:
    return source.name == PLACEHOLDER_NAME and (source.path / "hayai_placeholder.json").is_file()
