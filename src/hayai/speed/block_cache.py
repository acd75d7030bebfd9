"""Block caching for transformer denoisers (SD3, Flux): diffusers' first-block cache
(`diffusers.hooks.apply_first_block_cache` with `FirstBlockCacheConfig(threshold)`; ParaAttention's First
Block Cache, which follows TeaCache, Liu et al. 2024, arXiv:2411.19108).

Every model evaluation runs the first transformer block. When its residual (output minus input) differs
from the one of the last evaluation that ran every block by less than `threshold` (mean absolute change
relative to that residual), the blocks after it are skipped and the change they made on that evaluation is
added instead. Unlike the fixed interval of step caching, it computes where the model's input moves fast
and skips where it moves slowly, so one threshold suits any number of steps.

diffusers' hooks do the caching; this module adds what they need to run in hayai's calls:
- SD3's last block (`context_pre_only`) returns no text features (None), and diffusers 0.42.1's cache
  computes that block's text change all the same: a TypeError on every SD3 model. So the cache covers the
  blocks before it, and the last block always runs, on the reused features.
- The cache keeps its residuals per "cache context", which a pipeline opens around each transformer call
  with `transformer.cache_context(name)`. SD3's transformer has no such method (it is not a diffusers
  `CacheMixin`) and its pipelines, like Flux's img2img and inpaint, open none, so the blocks are gathered
  in a small `CacheMixin` module and every sub-call opens its own context, numbered within its model
  evaluation. Under hayai's batch split (`memory.apply.split_denoiser_batch`: one transformer call per CFG
  half and image) each sample thus compares with and reuses its own residuals, deciding on its own; a
  batched call decides once for all its samples. (Flux's true CFG, two evaluations a step, would share one
  numbering: hayai runs Flux with its distilled guidance only.)
- It counts the sub-calls that ran every block and those that skipped, so a test can check it.
The hooks are removed after the call (`disable_cache`), leaving the model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BlockCache", "cached_blocks"]

_HOOK = "hayai_block_cache"


@dataclass
class _State:
    threshold: float
    evaluations: int = 0  # model evaluations in this call (one per transformer call, CFG halves together)
    slot: int = -1  # which sub-call of this evaluation (the batch split calls the transformer per sample)
    sub_calls: int = 0  # runs of the first block: one per evaluation, or per sample under the batch split
    computed: int = 0  # sub-calls that ran every block

    @property
    def skipped(self) -> int:
        """Sub-calls that reused the cached change of the blocks after the first."""
        return self.sub_calls - self.computed

    def begin_evaluation(self) -> None:
        self.evaluations += 1
        self.slot = -1


def cached_blocks(transformer) -> list:
    """The blocks the cache covers, in call order: all of the transformer's but a last one that returns no
    text features (SD3's `context_pre_only` block)."""
    if not hasattr(transformer, "transformer_blocks"):
        raise ValueError(f"block caching needs a transformer denoiser (SD3, Flux); got {type(transformer).__name__}")
    blocks = [*transformer.transformer_blocks, *getattr(transformer, "single_transformer_blocks", ())]
    if blocks and getattr(blocks[-1], "context_pre_only", False):
        blocks.pop()
    return blocks


def _classes():
    from contextlib import ExitStack

    import torch
    from diffusers.models.cache_utils import CacheMixin

    from hayai.speed.hooks import evaluation_hooks

    StateHook, Evaluation = evaluation_hooks()

    class CachedBlocks(torch.nn.Module, CacheMixin):
        """The cached blocks as one list: diffusers' cache API (`enable_cache`, `cache_context`,
        `disable_cache`) on a module that holds only them."""

        def __init__(self, blocks):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList(blocks)

    class SubCall(StateHook):
        """On the first block, outside diffusers' hook: the next sub-call opens its own cache context, which
        stays open for the blocks after it until the next sub-call (or the end of the call)."""

        def __init__(self, state: _State, blocks):
            super().__init__(state)
            self.blocks = blocks
            self.context = ExitStack()

        def pre_forward(self, module, *args, **kwargs):
            self.state.slot += 1
            self.state.sub_calls += 1
            self.context.close()
            self.context.enter_context(self.blocks.cache_context(f"sample {self.state.slot}"))
            return args, kwargs

    class Computed(StateHook):
        """On the last cached block, inside diffusers' hook: called only when the blocks are computed."""

        def pre_forward(self, module, *args, **kwargs):
            self.state.computed += 1
            return args, kwargs

    return CachedBlocks, Evaluation, SubCall, Computed


class BlockCache:
    """Block caching on `transformer` for the duration of a `with` block (one pipeline call)."""

    def __init__(self, transformer, threshold: float):
        blocks = cached_blocks(transformer)
        if len(blocks) < 2:  # a model's size, not a bug: the user's error to fix
            from hayai.errors import RequestError

            raise RequestError(f"block_cache needs a transformer with at least 2 blocks to cache (all but SD3's "
                               f"last); this {type(transformer).__name__} has {len(blocks)}: run it without block_cache")
        self.transformer, self.state = transformer, _State(threshold)
        self._blocks = blocks
        self._undo = None  # an ExitStack that removes what __enter__ installed

    def __enter__(self) -> BlockCache:
        from contextlib import ExitStack

        from diffusers.hooks import FirstBlockCacheConfig

        CachedBlocks, Evaluation, SubCall, Computed = _classes()
        with ExitStack() as undo:  # an install that fails halfway removes what it installed
            _register(undo, self._blocks[-1], Computed(self.state))  # before diffusers' hook: inside it
            cache = CachedBlocks(self._blocks)
            cache.enable_cache(FirstBlockCacheConfig(threshold=self.state.threshold))
            undo.callback(cache.disable_cache)
            sub_call = SubCall(self.state, cache)
            _register(undo, self._blocks[0], sub_call)  # after diffusers' hook: around it
            undo.callback(sub_call.context.close)
            _register(undo, self.transformer, Evaluation(self.state))
            self._undo = undo.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._undo.close()


def _register(undo, module, hook) -> None:
    """`hook` on `module` under hayai's name, and its removal on `undo`."""
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, _HOOK)
    undo.callback(registry.remove_hook, _HOOK, recurse=False)
