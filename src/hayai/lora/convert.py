"""Where each LoRA layer lands: file names -> module paths of a loaded diffusers pipeline.

`ModuleIndex` lists every Linear and Conv2d of the pipeline's denoiser and text encoders under all the
names LoRA files use for it:
- diffusers module paths (`down_blocks.0.attentions.0.proj_in`), with and without `text_model.` for
  CLIP text encoders (transformers 5's CLIPTextModel has no such wrapper, the files still write it);
- kohya names: the path with `_` for `.` (SD1/SD2 U-Net, text encoders, T5), plus the LDM/SAI path for
  the U-Net (`input_blocks_4_1_...`, SDXL and LDM-named SD1 files), and SAI's MMDiT names for SD3
  (`joint_blocks_0_x_block_attn_qkv`), where one fused qkv layer lands on three diffusers layers (row
  thirds of its up matrix) and the modulations SAI orders (shift, scale) land with their halves swapped.

`map_layers` turns a file's layers into `(layer, targets)` pairs and lists what landed nowhere, with why.
`kohya_to_diffusers` writes a kohya file (SD3 included) in diffusers' `pytorch_lora_weights` naming.
"""

from __future__ import annotations

from dataclasses import dataclass

from hayai.errors import ModelError
from hayai.lora.formats import DENOISER, LayerWeights, LoraError
from hayai.models.components import denoiser_name
from hayai.models.families import Family
from hayai.models.single_file import original_unet_name, unet_names_to_original

__all__ = ["ModuleIndex", "Target", "kohya_to_diffusers", "map_layers"]

_TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass(frozen=True)
class Target:
    """A layer's destination: one module, optionally a row range of the update, optionally swapped halves."""

    component: str  # "unet", "transformer", "text_encoder", ...
    module: str  # module path inside the component
    rows: tuple[int, int] | None = None  # rows of the layer's up matrix that belong here (fused qkv)
    swap_halves: bool = False  # SAI (shift, scale) -> diffusers (scale, shift)

    @property
    def is_text_encoder(self) -> bool:
        return self.component in _TEXT_COMPONENTS


def _underscored(path: str) -> str:
    return path.replace(".", "_")


class ModuleIndex:
    """The LoRA-targetable layers of a pipeline, by every name LoRA files give them (built lazily)."""

    def __init__(self, pipe, family: Family) -> None:
        self.pipe = pipe
        self.family = Family(family)
        self.denoiser = denoiser_name(pipe)
        names = (self.denoiser, *_TEXT_COMPONENTS)
        self.components = {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}
        self._paths: dict[str, dict[str, str]] = {}
        self._kohya: dict[str, dict[str, tuple[Target, ...]]] = {}

    def component(self, name: str | None) -> str:
        return self.denoiser if name in (None, DENOISER) else name

    def modules(self, component: str) -> dict[str, str]:
        """Alias -> module path of the component's Linear/Conv2d layers."""
        if component not in self._paths:
            import torch

            aliases: dict[str, str] = {}
            root = self.components[component]
            clip = "CLIPText" in type(root).__name__
            for path, module in root.named_modules():
                if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                    continue
                aliases[path] = path
                if clip and path != "text_projection":
                    if path.startswith("text_model."):
                        aliases.setdefault(path[len("text_model.") :], path)
                    else:
                        aliases.setdefault("text_model." + path, path)
            self._paths[component] = aliases
        return self._paths[component]

    def kohya_names(self, component: str) -> dict[str, tuple[Target, ...]]:
        """kohya layer name (without prefix) -> targets."""
        if component not in self._kohya:
            table: dict[str, tuple[Target, ...]] = {}
            for alias, path in self.modules(component).items():
                table.setdefault(_underscored(alias), (Target(component, path),))
            if component == "unet":
                original = unet_names_to_original(self.components["unet"].config)
                for path in set(self.modules(component).values()):
                    try:
                        table.setdefault(_underscored(original_unet_name(path, original)), (Target(component, path),))
                    except ModelError:
                        continue  # a module with no LDM counterpart keeps its diffusers name only
            elif component == "transformer" and self.family is Family.SD3:
                table.update(_sd3_sai_names(self.components["transformer"]))
            self._kohya[component] = table
        return self._kohya[component]

    def weight(self, target: Target):
        return self.components[target.component].get_submodule(target.module).weight


def _sd3_sai_names(transformer) -> dict[str, tuple[Target, ...]]:
    """SAI MMDiT layer names (underscored, as kohya writes them) -> diffusers SD3 transformer targets."""
    config = transformer.config
    t = "transformer"
    dim = config.num_attention_heads * config.attention_head_dim
    thirds = [(0, dim), (dim, 2 * dim), (2 * dim, 3 * dim)]

    def split(prefix: str, names: tuple[str, str, str]) -> tuple[Target, ...]:
        return tuple(Target(t, f"{prefix}.{name}", rows) for name, rows in zip(names, thirds))

    table = {
        "x_embedder_proj": (Target(t, "pos_embed.proj"),),
        "context_embedder": (Target(t, "context_embedder"),),
        "t_embedder_mlp_0": (Target(t, "time_text_embed.timestep_embedder.linear_1"),),
        "t_embedder_mlp_2": (Target(t, "time_text_embed.timestep_embedder.linear_2"),),
        "y_embedder_mlp_0": (Target(t, "time_text_embed.text_embedder.linear_1"),),
        "y_embedder_mlp_2": (Target(t, "time_text_embed.text_embedder.linear_2"),),
        "final_layer_linear": (Target(t, "proj_out"),),
        "final_layer_adaLN_modulation_1": (Target(t, "norm_out.linear", swap_halves=True),),
    }
    last = config.num_layers - 1
    dual = set(config.dual_attention_layers or ())
    for i in range(config.num_layers):
        hf, x, ctx = f"transformer_blocks.{i}", f"joint_blocks_{i}_x_block", f"joint_blocks_{i}_context_block"
        table[f"{x}_attn_qkv"] = split(f"{hf}.attn", ("to_q", "to_k", "to_v"))
        table[f"{x}_attn_proj"] = (Target(t, f"{hf}.attn.to_out.0"),)
        table[f"{x}_mlp_fc1"] = (Target(t, f"{hf}.ff.net.0.proj"),)
        table[f"{x}_mlp_fc2"] = (Target(t, f"{hf}.ff.net.2"),)
        table[f"{x}_adaLN_modulation_1"] = (Target(t, f"{hf}.norm1.linear"),)
        table[f"{ctx}_attn_qkv"] = split(f"{hf}.attn", ("add_q_proj", "add_k_proj", "add_v_proj"))
        if i == last:  # the last context block only feeds attention, with (scale, shift) modulation
            table[f"{ctx}_adaLN_modulation_1"] = (Target(t, f"{hf}.norm1_context.linear", swap_halves=True),)
        else:
            table[f"{ctx}_adaLN_modulation_1"] = (Target(t, f"{hf}.norm1_context.linear"),)
            table[f"{ctx}_attn_proj"] = (Target(t, f"{hf}.attn.to_add_out"),)
            table[f"{ctx}_mlp_fc1"] = (Target(t, f"{hf}.ff_context.net.0.proj"),)
            table[f"{ctx}_mlp_fc2"] = (Target(t, f"{hf}.ff_context.net.2"),)
        if i in dual:  # SD3.5's second self-attention on the image tokens
            table[f"{x}_attn2_qkv"] = split(f"{hf}.attn2", ("to_q", "to_k", "to_v"))
            table[f"{x}_attn2_proj"] = (Target(t, f"{hf}.attn2.to_out.0"),)
    return table


def _update_shape(layer: LayerWeights, target: Target) -> tuple[int, ...]:
    rows = target.rows[1] - target.rows[0] if target.rows else int(layer.up.shape[0])
    return (rows, int(layer.down.shape[1]), *layer.down.shape[2:])


def _fits(layer: LayerWeights, target: Target, weight_shape: tuple[int, ...]) -> bool:
    shape = _update_shape(layer, target)
    if target.rows and target.rows[1] > layer.up.shape[0]:
        return False
    if tuple(shape) == tuple(weight_shape):
        return True
    squeeze = lambda s: tuple(s[:2]) if len(s) == 4 and tuple(s[2:]) == (1, 1) else tuple(s)  # noqa: E731
    return squeeze(shape) == squeeze(weight_shape)  # a 1x1 conv and a linear layer hold the same matrix


def _component_for_peft(index: ModuleIndex, layers: list[LayerWeights]) -> str | None:
    """The one component every PEFT layer fits (by path and shape), or None."""
    fitting = []
    for name in index.components:
        modules = index.modules(name)
        if all(
            layer.module in modules and _fits(layer, Target(name, modules[layer.module]), tuple(index.weight(Target(name, modules[layer.module])).shape))
            for layer in layers
        ):
            fitting.append(name)
    return fitting[0] if len(fitting) == 1 else None


def map_layers(layers: list[LayerWeights], fmt: str, index: ModuleIndex):
    """[(layer, targets)] for the layers that land, and [(key, reason)] for every key that does not."""
    mapped: list[tuple[LayerWeights, tuple[Target, ...]]] = []
    unmatched: list[tuple[str, str]] = []
    peft_component = _component_for_peft(index, layers) if fmt == "peft" else None
    for layer in layers:
        if fmt == "peft":
            component = peft_component
            if component is None:
                unmatched.extend((k, "no one component of this model has all of the file's layers") for k in layer.keys)
                continue
        else:
            component = index.component(layer.component)
        if component not in index.components:
            unmatched.extend((k, f"this model has no {component}") for k in layer.keys)
            continue
        if fmt == "kohya":
            targets = index.kohya_names(component).get(layer.module)
        else:
            path = index.modules(component).get(layer.module)
            targets = (Target(component, path),) if path else None
        if not targets:
            unmatched.extend((k, f"no layer {layer.module!r} in {component}") for k in layer.keys)
            continue
        quantized = [t for t in targets if not index.weight(t).is_floating_point()]
        if quantized:
            t = quantized[0]
            reason = f"{t.component}.{t.module} is stored quantized ({index.weight(t).dtype}): apply LoRAs before quantizing"
            unmatched.extend((k, reason) for k in layer.keys)
            continue
        bad = [t for t in targets if not _fits(layer, t, tuple(index.weight(t).shape))]
        if bad:
            shape = tuple(index.weight(bad[0]).shape)
            reason = f"update {_update_shape(layer, bad[0])} does not fit {bad[0].component}.{bad[0].module} {shape}"
            unmatched.extend((k, reason) for k in layer.keys)
            continue
        mapped.append((layer, targets))
    return mapped, unmatched


def target_up(layer: LayerWeights, target: Target):
    """The part of the layer's up matrix that updates `target` (its rows, halves swapped if needed)."""
    import torch

    up = layer.up
    if target.rows:
        up = up[target.rows[0] : target.rows[1]]
    if target.swap_halves:
        first, second = up.chunk(2, dim=0)
        up = torch.cat([second, first], dim=0)
    return up


def diffusers_lora_metadata(configs: dict[str, dict]) -> dict[str, str]:
    """The safetensors header diffusers' `load_lora_weights` reads the alphas from: one LoraConfig per
    component (its most common rank and alpha, the others as patterns), from `configs` =
    {component: {"ranks": {module: rank}, "alphas": {module: alpha}}}."""
    import json
    from collections import Counter

    packed = {}
    for component, config in configs.items():
        r = Counter(config["ranks"].values()).most_common(1)[0][0]
        alpha = Counter(config["alphas"].values()).most_common(1)[0][0]
        packed.update({
            f"{component}.r": r,
            f"{component}.lora_alpha": alpha,
            f"{component}.rank_pattern": {m: v for m, v in config["ranks"].items() if v != r},
            f"{component}.alpha_pattern": {m: v for m, v in config["alphas"].items() if v != alpha},
            f"{component}.target_modules": sorted(config["ranks"]),
        })
    return {"format": "pt", "lora_adapter_metadata": json.dumps(packed, sort_keys=True)}


def kohya_to_diffusers(layers: list[LayerWeights], index: ModuleIndex, *, fmt: str = "kohya") -> tuple[dict, dict[str, str]]:
    """The layers in diffusers' naming, and the safetensors metadata that carries their alphas.

    Keys are `<component>.<path>.lora_A.weight` / `.lora_B.weight`; SD3's fused qkv layers become
    separate q, k and v layers sharing the down matrix. Alphas go into diffusers' `lora_adapter_metadata`
    header entry (a LoraConfig per component), which `load_lora_weights` reads from a file. Raises if
    any layer does not land on the model (the same check `LoraSet.apply` makes).
    """
    mapped, unmatched = map_layers(layers, fmt, index)
    if unmatched:
        raise LoraError(f"{len(unmatched)} keys match no layer of the model: {', '.join(k for k, _ in unmatched[:10])}")
    tensors: dict = {}
    configs: dict[str, dict] = {}
    for layer, targets in mapped:
        for target in targets:
            name = f"{target.component}.{target.module}"
            tensors[f"{name}.lora_A.weight"] = layer.down.clone()  # q, k and v get their own copy
            tensors[f"{name}.lora_B.weight"] = target_up(layer, target).clone()
            config = configs.setdefault(target.component, {"ranks": {}, "alphas": {}})
            config["ranks"][target.module] = layer.rank
            config["alphas"][target.module] = layer.alpha if layer.alpha is not None else layer.rank
    return tensors, diffusers_lora_metadata(configs)
