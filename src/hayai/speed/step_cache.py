"""Step caching for UNets, as DeepCache (Ma et al. 2023, arXiv:2312.00858) does it: the deep features of
the UNet change slowly from one denoising step to the next, so they are computed every `interval` model
evaluations and reused in between, when only the shallowest branch runs (conv_in, the last layer of the
last up block, conv_out).

On a cached evaluation every down block, the mid block, every up block but the last, and all but the
last resnet (and attention) of the last up block return what they returned on the last full evaluation;
the last resnet gets the fresh skip connection from conv_in. This is DeepCache's `cache_branch_id=0`
with uniform skipping.

Why not the `DeepCache` package (0.1.1, last release 2023-12)? Its `DeepCacheSDHelper` still runs with
diffusers 0.42.1, and on the tiny SD1 model it gave the same pixels as this module (interval 3, branch 0;
checked once by hand, it is not a dependency). But it replaces module `forward`s by hand and finds the
step by looking the timestep up in `scheduler.timesteps`, which is
wrong for samplers that evaluate a timestep twice (Heun, DPM2); it keeps one output per block, which is
wrong under hayai's batch-split strategy (the UNet called once per CFG half and image,
`memory.apply.split_denoiser_batch`); and it counts nothing a test could check. diffusers' own step
caches (`diffusers.hooks`: first-block cache, MagCache, ...) walk a flat list of transformer blocks, each
adding to the one stream of features, which a UNet does not have: its blocks change resolution and pass
skip connections, so no one block's output stands for the rest. Those caches serve the transformer
families instead (the first-block cache is `hayai.speed.block_cache`, for SD3 and Flux). So this module
uses diffusers' hook registry (`diffusers.hooks.HookRegistry`, the mechanism those caches are built on)
to replace the cached blocks' outputs, and removes its hooks after the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StepCache", "cached_blocks"]

_HOOK = "hayai_step_cache"


@dataclass
class _State:
    interval: int
    evaluation: int = -1  # model evaluations so far in this call (one per UNet call, CFG halves together)
    slot: int = -1  # which sub-call of this evaluation (the batch-split strategy calls the UNet per sample)
    full_evaluations: int = 0
    cached_evaluations: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # block name -> calls answered from the cache

    @property
    def full(self) -> bool:
        return self.evaluation % self.interval == 0

    def begin_evaluation(self) -> None:
        self.evaluation += 1
        self.slot = -1
        if self.full:
            self.full_evaluations += 1
        else:
            self.cached_evaluations += 1


def cached_blocks(unet) -> list[tuple[str, object]]:
    """(name, module) of the blocks a cached evaluation does not run."""
    blocks = [(f"down_blocks.{i}", block) for i, block in enumerate(unet.down_blocks)]
    blocks.append(("mid_block", unet.mid_block))
    last = len(unet.up_blocks) - 1
    blocks += [(f"up_blocks.{i}", block) for i, block in enumerate(unet.up_blocks) if i < last]
    final = unet.up_blocks[last]
    for group in ("resnets", "attentions"):
        layers = getattr(final, group, None) or []
        blocks += [(f"up_blocks.{last}.{group}.{j}", layer) for j, layer in enumerate(layers) if j < len(layers) - 1]
    return [(name, module) for name, module in blocks if module is not None]


def _hook_classes():
    from hayai.speed.hooks import evaluation_hooks

    StateHook, Evaluation = evaluation_hooks()

    class SubCall(StateHook):
        """On conv_in, which every (possibly split) UNet forward runs once: the next slot of the cache."""

        def pre_forward(self, module, *args, **kwargs):
            self.state.slot += 1
            return args, kwargs

    class Cached(StateHook):
        """On a deep block: run it on full evaluations and keep its output; answer from the cache otherwise."""

        def __init__(self, state: _State, name: str):
            super().__init__(state)
            self.name = name
            self.outputs: dict[int, object] = {}

        def new_forward(self, module, *args, **kwargs):
            state = self.state
            if state.full or state.slot not in self.outputs:
                output = self.fn_ref.original_forward(*args, **kwargs)
                self.outputs[state.slot] = output
                return output
            state.skipped[self.name] = state.skipped.get(self.name, 0) + 1
            return self.outputs[state.slot]

    return Evaluation, SubCall, Cached


class StepCache:
    """Step caching on `unet` for the duration of a `with` block (one pipeline call)."""

    def __init__(self, unet, interval: int):
        if not hasattr(unet, "down_blocks"):
            raise ValueError(f"step caching needs a UNet; got {type(unet).__name__}")
        self.unet, self.state = unet, _State(interval)
        self._registries: list = []

    def __enter__(self) -> StepCache:
        from diffusers.hooks import HookRegistry

        Evaluation, SubCall, Cached = _hook_classes()
        hooks = [(self.unet, Evaluation(self.state)), (self.unet.conv_in, SubCall(self.state))]
        hooks += [(module, Cached(self.state, name)) for name, module in cached_blocks(self.unet)]
        for module, hook in hooks:
            registry = HookRegistry.check_if_exists_or_initialize(module)
            registry.register_hook(hook, _HOOK)
            self._registries.append(registry)
        return self

    def __exit__(self, *exc) -> None:
        for registry in self._registries:
            registry.remove_hook(_HOOK, recurse=False)
        self._registries.clear()
