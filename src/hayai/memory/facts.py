"""What the planner knows about a model: parameter counts, offload units and configs, without weights.

`ModelFacts` is plain data taken from a pipeline (on the meta device or real), from a diffusers folder's
config.json files (the models are instantiated on the meta device, so no weight is read and nothing is
allocated), or from one of the real architectures of `hayai.models.architectures`.

Per component it records the units the offload strategies move, following diffusers' hooks:
- block-level group offload (`hooks/group_offloading.py`, `_apply_group_offloading_block_level`) makes
  a group of each element of the model's top-level `ModuleList`/`Sequential` children, and one more
  "unmatched" group of everything else (conv_in, embeddings, the UNet's mid block, ...), which stays on
  the device for the whole forward: `largest_block_params` and `unblocked_params`;
- leaf-level group offload and sequential CPU offload move one leaf layer at a time:
  `largest_layer_params`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from hayai.errors import ModelError
from hayai.models.families import Family, detect_family_from_folder

__all__ = ["ComponentFacts", "ModelFacts", "facts_from_pipeline", "facts_from_folder", "facts_for_architecture", "ROLES"]

# Pipeline attribute -> role, in the order the pipeline runs them.
ROLES = {
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder",
    "text_encoder_3": "text_encoder",
    "unet": "denoiser",
    "transformer": "denoiser",
    "vae": "vae",
}


@dataclass(frozen=True)
class ComponentFacts:
    name: str  # pipeline attribute: "text_encoder", "text_encoder_2", "text_encoder_3", "unet" or "transformer", "vae"
    role: str  # "text_encoder" | "denoiser" | "vae"
    params: int  # parameters (shared ones counted once)
    largest_block_params: int  # the biggest element of a top-level ModuleList/Sequential (0 if none)
    largest_layer_params: int  # the biggest leaf module's own parameters (what sequential offload moves at once)
    buffers: int = 0  # floating-point buffer elements: weights in all but name (SD3's 226M-element pos_embed)
    unblocked_params: int = 0  # params + buffers outside those blocks: resident throughout a block-offloaded forward
    hidden_size: int = 0  # text encoders: the residual width (CLIP hidden_size, T5 d_model); 0 for the others


@dataclass(frozen=True)
class ModelFacts:
    family: Family
    components: tuple[ComponentFacts, ...]
    latent_channels: int
    vae_scale_factor: int  # image pixels per latent pixel along each side (8 for every SD VAE)
    native_size: int  # the pipeline's default width/height: denoiser sample_size x vae_scale_factor
    denoiser_class: str  # "UNet2DConditionModel" | "SD3Transformer2DModel" ...
    denoiser_config: dict  # public config keys, JSON types: enough to rebuild it on meta (FLOP counting)
    vae_config: dict

    def component(self, name: str) -> ComponentFacts:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(f"name={name!r} is not a component of this model; it has {[c.name for c in self.components]}")

    def by_role(self, role: str) -> list[ComponentFacts]:
        if role not in set(ROLES.values()):
            raise ValueError(f"role={role!r} is not one of {sorted(set(ROLES.values()))}")
        return [component for component in self.components if component.role == role]


def _plain_config(config) -> dict:
    """A config's public keys as JSON types (tuples become lists), so configs compare equal however loaded."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, default=str))


def _block_children(module):
    import torch

    return [child for child in module.children() if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential))]


def component_facts(name: str, module) -> ComponentFacts:
    """The facts of one model (works on meta and real modules alike)."""
    params = sum(p.numel() for p in module.parameters())
    buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    blocks = [block for children in _block_children(module) for block in children]
    block_sizes = [sum(p.numel() for p in block.parameters()) for block in blocks]
    blocked = {id(p) for block in blocks for p in block.parameters()} | {id(b) for block in blocks for b in block.buffers()}
    unblocked = sum(p.numel() for p in module.parameters() if id(p) not in blocked)
    unblocked += sum(b.numel() for b in module.buffers() if b.is_floating_point() and id(b) not in blocked)
    largest_layer = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules()), default=0)
    hidden = 0
    if ROLES[name] == "text_encoder":
        hidden = getattr(module.config, "hidden_size", None) or getattr(module.config, "d_model", 0)
    return ComponentFacts(
        name=name,
        role=ROLES[name],
        params=params,
        largest_block_params=max(block_sizes, default=0),
        largest_layer_params=largest_layer,
        buffers=buffers,
        unblocked_params=unblocked,
        hidden_size=int(hidden),
    )


def _facts(family: Family, models: dict) -> ModelFacts:
    if "vae" not in models or not ({"unet", "transformer"} & models.keys()):
        raise ModelError(f"a {family.value} model needs a vae and a unet or transformer; it has {sorted(models)}")
    denoiser = models.get("unet") or models["transformer"]
    vae = models["vae"]
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    return ModelFacts(
        family=Family(family),
        components=tuple(component_facts(name, models[name]) for name in ROLES if name in models),
        latent_channels=int(vae.config.latent_channels),
        vae_scale_factor=scale,
        native_size=int(denoiser.config.sample_size) * scale,
        denoiser_class=type(denoiser).__name__,
        denoiser_config=_plain_config(denoiser.config),
        vae_config=_plain_config(vae.config),
    )


def facts_from_pipeline(pipe, family: Family | str) -> ModelFacts:
    """The facts of a loaded (or meta) diffusers pipeline of `family`."""
    models = {name: getattr(pipe, name) for name in ROLES if getattr(pipe, name, None) is not None}
    return _facts(Family(family), models)


def _meta_model(folder: Path, name: str, library: str, class_name: str):
    """Component `name` of a diffusers folder, instantiated from its config.json on the meta device."""
    import diffusers
    import torch
    import transformers

    path = folder / name
    if not (path / "config.json").is_file():
        raise ModelError(f"{folder} lists a {name} but {path / 'config.json'} is missing; the model folder is damaged")
    module = diffusers if library == "diffusers" else transformers
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelError(f"{path}: class {class_name!r} is not in {library}")
    with torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(cls.load_config(path))
        return cls(transformers.AutoConfig.from_pretrained(path))


def facts_from_folder(folder: Path) -> ModelFacts:
    """The facts of a diffusers model folder, from its config files only (no weights are read)."""
    folder = Path(folder)
    family = detect_family_from_folder(folder)
    index = json.loads((folder / "model_index.json").read_text())
    models = {}
    for name in ROLES:
        entry = index.get(name)
        if isinstance(entry, list) and len(entry) == 2 and entry[0] is not None:
            models[name] = _meta_model(folder, name, entry[0], entry[1])
    return _facts(family, models)


@lru_cache(maxsize=None)
def _architecture_facts(name: str) -> ModelFacts:
    from hayai.models.architectures import ARCHITECTURES, build_architecture

    return facts_from_pipeline(build_architecture(name, device="meta"), ARCHITECTURES[name].family)


def facts_for_architecture(name: str) -> ModelFacts:
    """The facts of a real architecture ("sd15", "sdxl", "sd35m"), built on the meta device once."""
    from hayai.models.architectures import ARCHITECTURES

    if name not in ARCHITECTURES:
        raise ValueError(f"name={name!r} is not a known architecture; choose one of {sorted(ARCHITECTURES)}")
    return _architecture_facts(name)


def facts_for_source(source) -> tuple[ModelFacts, str]:
    """The facts of a resolved model (`hayai.models.loading.ModelSource`) without loading it, and how to name
    it: a folder's from its configs, an architecture's from the meta device, a single file's as the standard
    architecture of its family."""
    from hayai.models.families import Family

    if source.kind == "architecture":
        return facts_for_architecture(source.name.split(":", 1)[1]), source.name
    if source.kind == "folder":
        return facts_from_folder(source.path), source.name
    standard = {Family.SD1: "sd15", Family.SD2: "sd15", Family.SDXL: "sdxl", Family.SD3: "sd35m"}[source.family]
    return facts_for_architecture(standard), f"{source.name} (planned as the standard {standard} architecture)"
