"""Turning a model source into a ready diffusers pipeline.

A `ModelSource` says where a model is and what it is (family, kind); `load_pipeline` hands it to
diffusers' own loaders: `from_pretrained` for diffusers folders (hub ids are resolved to their folder in
the local Hugging Face cache first), `from_single_file` for A1111/ComfyUI checkpoints. Nothing here
downloads: every call passes `local_files_only=True`, and a missing file becomes an error that says
how to get it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from hayai.errors import ModelError, ModelNotFoundError, UnsafeCheckpointError, damaged_safetensors
from hayai.models.components import denoiser_of
from hayai.models.headers import safetensors_header
from hayai.models.families import FAMILY_INFO, Family, detect_family_from_folder, detect_family_from_keys

__all__ = [
    "ARCH_PREFIX",
    "ModelSource",
    "SAFE_SUFFIXES",
    "PICKLE_SUFFIXES",
    "source_from_path",
    "source_from_architecture",
    "source_from_hub_cache",
    "looks_like_hub_id",
    "hub_snapshot",
    "SINGLE_FILE_CONFIG_REPOS",
    "read_checkpoint_shapes",
    "load_pipeline",
    "native_size",
    "native_side",
]

ARCH_PREFIX = "arch:"  # `--model arch:sd15`: a real architecture with random weights (hayai.models.architectures)
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_OPTIONAL_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

# Default component configs diffusers uses for single files (the hub repos it reads them from).
SINGLE_FILE_CONFIG_REPOS = {
    Family.SD1: "stable-diffusion-v1-5/stable-diffusion-v1-5",
    Family.SD2: "stabilityai/stable-diffusion-2-1",
    Family.SDXL: "stabilityai/stable-diffusion-xl-base-1.0",
    Family.SD3: "stabilityai/stable-diffusion-3.5-medium",
    Family.FLUX: "black-forest-labs/FLUX.1-dev",
}


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "folder" (diffusers layout), "single_file", or "architecture" (random weights, no files)
    path: Path
    family: Family
    name: str  # what A1111 shows as "Model"
    config: Path | None = None  # single files: a diffusers folder holding the component configs
    hub_id: str | None = None  # set when the folder came from the Hugging Face cache


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def read_checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a .safetensors header, without reading the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception:  # safetensors raises its own error types for a damaged header
        raise ModelError(damaged_safetensors(path)) from None


def source_from_path(path: Path, *, allow_pickle: bool = False, config: Path | None = None) -> ModelSource:
    """A model source for a local file or diffusers folder, with its family detected."""
    path = Path(path).expanduser()
    if path.is_dir():
        family = detect_family_from_folder(path)
        _check_components(path)
        return ModelSource("folder", path.resolve(), family, path.name)
    if not path.is_file():
        raise ModelNotFoundError(f"model path {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path.name} is a pickle checkpoint: loading it can run any code its author put in it. "
                "Prefer a .safetensors copy of the model; if you trust its source, pass --allow-pickle "
                "(Python: Engine(allow_pickle=True))."
            )
        family = _family_of_pickle(path)
    elif suffix in SAFE_SUFFIXES:
        family = detect_family_from_keys(read_checkpoint_shapes(path))
    else:
        raise ModelError(f"{path.name}: unknown model file type {suffix!r}; expected .safetensors (or .ckpt with --allow-pickle)")
    if config is not None and not (Path(config) / "model_index.json").is_file():
        raise ModelError(f"model_config={str(config)!r} is not a diffusers folder (it has no model_index.json)")
    return ModelSource("single_file", path.resolve(), family, path.stem, Path(config).resolve() if config else None)


def _check_components(folder: Path) -> None:
    """Each component `model_index.json` names has its folder, so a missing one is named here rather than
    in diffusers' "no file named config.json" (optional components, which hayai does not load, aside)."""
    index = json.loads((folder / "model_index.json").read_text())  # detect_family_from_folder has checked it reads
    missing = [name for name, value in index.items()
               if isinstance(value, list) and len(value) == 2 and all(value) and name not in _OPTIONAL_COMPONENTS
               and not (folder / name).is_dir()]
    if missing:
        listed = ", ".join(f"{name}/" for name in missing)
        raise ModelError(f"{folder} is incomplete: it has no {listed} folder, which its model_index.json names; "
                         "copy or download the whole model folder again")
    for name in index:  # a weights file cut short would be found only at load time, after the model became the default
        for weights in sorted((folder / name).glob("*.safetensors")) if (folder / name).is_dir() else ():
            try:
                safetensors_header(weights)
            except (OSError, ValueError, UnicodeDecodeError):
                raise ModelError(damaged_safetensors(weights)) from None


def _family_of_pickle(path: Path) -> Family:
    """The family of a pickle checkpoint, read as diffusers reads it: tensors and plain containers only
    (`weights_only=True`), so no code in the file runs; memory-mapped where the file is a zip (torch >= 1.6)."""
    import pickle
    import zipfile

    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        reason = _first_sentence(str(exc).partition("WeightsUnpickler error:")[2] or str(exc))
        if reason.startswith("Unsupported global"):
            raise UnsafeCheckpointError(
                f"{path.name} holds Python objects besides tensors ({reason.replace(' was not an allowed global by default', '')}): "
                "reading them would run code from the file, so hayai reads only tensors, as diffusers does, and "
                "cannot load it. Use a .safetensors copy of the model."
            ) from None
        raise ModelError(f"{path.name} is not a readable PyTorch checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # a truncated or damaged file
        raise ModelError(f"{path.name} is not a readable PyTorch checkpoint ({_first_sentence(str(exc))})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path.name} holds no state dict (a {type(checkpoint).__name__}), so it is not a model checkpoint")
    return detect_family_from_keys({k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")})


def _first_sentence(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].split(". ")[0] if lines else text


def hub_snapshot(repo_id: str) -> Path | None:
    """The folder of `repo_id` in the local Hugging Face cache, or None; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def source_from_architecture(name: str) -> ModelSource:
    """`arch:sd15` / `arch:sdxl` / `arch:sd35m`: the real architecture, random weights, nothing on disk.

    Its images are noise, but its time and memory are those of the real model (benchmarks, sweeps).
    """
    from hayai.models.architectures import ARCHITECTURES

    arch = name[len(ARCH_PREFIX):] if name.startswith(ARCH_PREFIX) else name
    if arch not in ARCHITECTURES:
        choices = ", ".join(ARCH_PREFIX + known for known in ARCHITECTURES)
        raise ModelNotFoundError(f"model={name!r} is not a known architecture; choose one of: {choices}")
    return ModelSource("architecture", Path(ARCH_PREFIX + arch), ARCHITECTURES[arch].family, ARCH_PREFIX + arch)


def source_from_hub_cache(repo_id: str) -> ModelSource:
    """The local Hugging Face cache's copy of a hub model; never downloads."""
    folder = hub_snapshot(repo_id)
    if folder is None:
        raise ModelNotFoundError(
            f"{repo_id!r} is not in the local Hugging Face cache, and hayai never downloads on its own. "
            f"Get it with `hf download {repo_id}` (pip install huggingface_hub; log in first for gated models), "
            "then run again; or pass the path of a local copy."
        ) from None
    source = source_from_path(folder)
    return ModelSource("folder", folder, source.family, repo_id, hub_id=repo_id)


def native_side(source: ModelSource) -> int:
    """The side a model draws at by default, from its configs only (no weights, no torch): the denoiser's
    sample_size x the VAE's scale; a single file or an architecture: its family's."""
    if source.kind == "folder":
        try:
            denoiser = next(source.path / name / "config.json" for name in ("unet", "transformer")
                            if (source.path / name / "config.json").is_file())
            sample = json.loads(denoiser.read_text())["sample_size"]
            blocks = json.loads((source.path / "vae" / "config.json").read_text())["block_out_channels"]
            return (sample if isinstance(sample, int) else sample[0]) * 2 ** (len(blocks) - 1)
        except (StopIteration, OSError, ValueError, KeyError, TypeError):
            pass  # a damaged folder: its loading will say so
    return FAMILY_INFO[source.family].native_size


def native_size(pipe) -> tuple[int, int]:
    """The (width, height) a pipeline generates by default: its denoiser's sample size x VAE factor."""
    denoiser = denoiser_of(pipe)
    sample = denoiser.config.sample_size
    side = (sample if isinstance(sample, int) else sample[0]) * pipe.vae_scale_factor
    return side, side


def load_pipeline(source: ModelSource, *, torch_dtype=None, device="cpu"):
    """A diffusers pipeline for `source`, weights in `torch_dtype`, on the CPU (placement is the caller's).

    Architecture sources are built rather than read: on `device` ("meta" allocates nothing; a real
    device gets random weights created there once, in `torch_dtype`, the same for every run).
    Files are always read to the CPU.
    """
    import diffusers

    if source.kind == "architecture":
        from hayai.models.architectures import build_architecture

        return build_architecture(source.name[len(ARCH_PREFIX):], device=device, dtype=torch_dtype, seed=0)
    cls = getattr(diffusers, FAMILY_INFO[source.family].pipeline_class)
    extra = {}
    if source.family in (Family.SD1, Family.SD2):
        # A1111 and ComfyUI run no safety checker; loading one costs ~1.2 GB for nothing the user asked.
        extra = {"safety_checker": None, "requires_safety_checker": False}
    if source.kind == "folder":
        try:
            pipe = cls.from_pretrained(source.path, torch_dtype=torch_dtype, local_files_only=True, **extra)
        except (OSError, ValueError) as exc:
            raise ModelError(f"could not load the diffusers folder {source.path}: {exc}") from None
    else:
        pipe = _load_single_file(cls, source, torch_dtype, extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_single_file(cls, source: ModelSource, torch_dtype, extra: dict):
    kwargs = dict(torch_dtype=torch_dtype, local_files_only=True, **extra)
    sidecar = source.path.with_suffix(".yaml")  # A1111's convention for a checkpoint's original config
    if source.config is not None:
        kwargs["config"] = str(source.config)
    elif sidecar.is_file():
        kwargs["original_config"] = str(sidecar)
    try:
        return cls.from_single_file(str(source.path), **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        if source.config is not None or sidecar.is_file():
            raise ModelError(f"could not load {source.path.name}: {exc}") from None
        repo = SINGLE_FILE_CONFIG_REPOS[source.family]
        raise ModelError(
            f"could not load {source.path.name}: a single-file {source.family.value} checkpoint needs the "
            f"pipeline's component configs and tokenizer, which are not in the local Hugging Face cache. "
            f"Get them once (a few MB, no weights) with `hf download {repo} --exclude '*.safetensors' '*.bin' "
            f"'*.ckpt' '*.pth'`, or point hayai at a diffusers folder of the same family with --model-config DIR. "
            f"(diffusers said: {exc})"
        ) from None
