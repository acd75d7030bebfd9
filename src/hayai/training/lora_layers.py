"""The trainable LoRA network: low-rank updates attached to a pipeline's layers by forward hooks.

Each targeted `Linear` (or 1x1 `Conv2d`) keeps its frozen weight W; its output gains
`scale * up(down(dropout(x)))` with `scale = alpha / rank`, `down` initialised as PEFT and kohya do
(Kaiming-uniform) and `up` at zero, so an untrained network changes nothing. The hooks leave the
model's own module tree and state dict untouched (a pipeline with a network attached still saves,
loads and runs as before); `detach()` removes them.

Targets are chosen by name, PEFT's way: an entry of `target_modules` matches a module whose path is
the entry or ends with `.entry`. The defaults are the attention projections of the denoiser (U-Net or
SD3 transformer, the joint-attention context projections included) and, when text encoders are
trained, of the CLIP text encoders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hayai.errors import RequestError
from hayai.models.components import denoiser_name
from hayai.models.families import Family

__all__ = [
    "DENOISER_TARGETS",
    "DISTILL_TARGETS",
    "TEXT_ENCODER_TARGETS",
    "LoraModule",
    "LoraNetwork",
    "LoraTarget",
    "default_targets",
    "find_targets",
]

# The attention projections: U-Net self/cross attention (attn1, attn2) and SD3's joint attention.
DENOISER_TARGETS = {
    Family.SD1: ("to_q", "to_k", "to_v", "to_out.0"),
    Family.SD2: ("to_q", "to_k", "to_v", "to_out.0"),
    Family.SDXL: ("to_q", "to_k", "to_v", "to_out.0"),
    Family.SD3: ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
}
# Distillation (method='lcm') changes how the model denoises, not only what it attends to: the whole
# transformer blocks of the U-Net (projections in and out, feed-forward), as kohya's LoRA and LCM-LoRA train.
DISTILL_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP self-attention
TRAINABLE_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # CLIPs; SD3's T5 is not trained (diffusers cannot load it)


def default_targets(family: Family) -> tuple[str, ...]:
    return DENOISER_TARGETS[Family(family)]


@dataclass(frozen=True)
class LoraTarget:
    component: str  # "unet", "transformer", "text_encoder", "text_encoder_2"
    path: str  # module path inside the component
    in_features: int
    out_features: int
    conv: bool  # a 1x1 Conv2d rather than a Linear

    @property
    def key(self) -> str:
        """The network's own name for the layer (ModuleDict keys cannot hold dots)."""
        return f"{self.component}/{self.path.replace('.', '/')}"


def _matches(path: str, entries: tuple[str, ...]) -> bool:
    return any(path == entry or path.endswith("." + entry) for entry in entries)


def find_targets(component: str, root, entries: tuple[str, ...]) -> list[LoraTarget]:
    """The Linear / 1x1 Conv2d layers of `root` whose path matches one of `entries`."""
    found = []
    for path, module in root.named_modules():
        if not path or not _matches(path, entries):
            continue
        if isinstance(module, torch.nn.Linear):
            found.append(LoraTarget(component, path, module.in_features, module.out_features, False))
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1:
            found.append(LoraTarget(component, path, module.in_channels, module.out_channels, True))
        else:
            raise RequestError(
                f"target_modules: {component}.{path} is a {type(module).__name__}; LoRA targets must be Linear "
                "or 1x1 Conv2d layers"
            )
    return found


class LoraModule(torch.nn.Module):
    """One layer's update: `scale * up(down(dropout(x)))`, in the LoRA's own dtype (float32 by default)."""

    def __init__(self, target: LoraTarget, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        r = min(rank, target.in_features, target.out_features)
        if target.conv:
            self.down = torch.nn.Conv2d(target.in_features, r, 1, bias=False)
            self.up = torch.nn.Conv2d(r, target.out_features, 1, bias=False)
        else:
            self.down = torch.nn.Linear(target.in_features, r, bias=False)
            self.up = torch.nn.Linear(r, target.out_features, bias=False)
        torch.nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.up.weight)
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        self.rank = r
        self.alpha = float(alpha)
        self.scale = self.alpha / r
        self.enabled = True

    def forward(self, x):
        return self.up(self.down(self.dropout(x.to(self.down.weight.dtype)))) * self.scale


class LoraNetwork:
    """The LoRA layers for one pipeline: build, attach (hooks), detach, parameters, state."""

    def __init__(self, targets: list[LoraTarget], rank: int, alpha: float, dropout: float = 0.0) -> None:
        if rank < 1:
            raise RequestError(f"rank={rank} must be at least 1")
        if not targets:
            raise RequestError("the LoRA has no target layers: no module of the model matches target_modules")
        self.targets = list(targets)
        self.rank = rank
        self.alpha = float(alpha)
        self.layers = torch.nn.ModuleDict({t.key: LoraModule(t, rank, alpha, dropout) for t in self.targets})
        self._handles: list = []

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def for_pipeline(cls, pipe, family: Family, *, rank: int, alpha: float, dropout: float = 0.0,
                     target_modules: tuple[str, ...] | None = None, text_encoders: bool = False) -> LoraNetwork:
        denoiser = denoiser_name(pipe)
        entries = tuple(target_modules) if target_modules else default_targets(family)
        targets = find_targets(denoiser, getattr(pipe, denoiser), entries)
        if not targets:
            raise RequestError(
                f"target_modules={list(entries)} match no Linear or 1x1 Conv2d layer of the {denoiser}; "
                f"the default for {Family(family).value} is {list(default_targets(family))}"
            )
        if text_encoders:
            for name in TRAINABLE_TEXT_ENCODERS:
                encoder = getattr(pipe, name, None)
                if encoder is not None:
                    targets += find_targets(name, encoder, TEXT_ENCODER_TARGETS)
        return cls(targets, rank, alpha, dropout)

    # -- hooks -------------------------------------------------------------------------------------
    def attach(self, pipe) -> None:
        """Hook every layer into `pipe` (idempotent: attaching again first detaches)."""
        self.detach()
        for target in self.targets:
            module = getattr(pipe, target.component).get_submodule(target.path)
            lora = self.layers[target.key]

            def hook(_module, args, output, lora=lora):
                if not lora.enabled:
                    return output
                return output + lora(args[0]).to(output.dtype)

            self._handles.append(module.register_forward_hook(hook))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def set_enabled(self, enabled: bool) -> None:
        for layer in self.layers.values():
            layer.enabled = enabled

    # -- parameters and state ----------------------------------------------------------------------
    def to(self, *args, **kwargs) -> LoraNetwork:
        self.layers.to(*args, **kwargs)
        return self

    def train(self, mode: bool = True) -> None:
        self.layers.train(mode)

    def parameters(self, components: tuple[str, ...] | None = None) -> list:
        """Trainable parameters, optionally only those of some components (for per-component learning rates)."""
        return [
            p for t in self.targets if components is None or t.component in components
            for p in self.layers[t.key].parameters()
        ]

    def components(self) -> list[str]:
        return list(dict.fromkeys(t.component for t in self.targets))

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.layers.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.layers.load_state_dict(state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def weights(self):
        """(target, down [r, in], up [out, r], alpha) per layer, float32 on the CPU (1x1 convs as matrices)."""
        out = []
        for target in self.targets:
            layer = self.layers[target.key]
            down = layer.down.weight.detach().to("cpu", torch.float32)
            up = layer.up.weight.detach().to("cpu", torch.float32)
            out.append((target, down.reshape(down.shape[0], -1), up.reshape(up.shape[0], -1), layer.alpha))
        return out
