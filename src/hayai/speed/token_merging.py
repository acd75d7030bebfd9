"""Token merging for the UNet's self-attention: ToMe for Stable Diffusion (Bolya & Hoffman 2023,
arXiv:2303.17604; the `tomesd` package's defaults: merge before self-attention only, at the full latent
resolution only, 2x2 strides with one random destination token per cell).

Before each self-attention at the full latent resolution, the `ratio` of its tokens most similar to a
token of a sparse destination set (one per 2x2 cell) are averaged into it; attention runs on what is
left, and its output is copied back to every merged token. Self-attention cost is quadratic in tokens,
so a ratio of 0.5 quarters it in those layers.

Why not the `tomesd` package (0.1.3, 2023-05)? It replaces the class of every transformer block with a
copy of diffusers 0.15's `BasicTransformerBlock.forward`, so newer blocks run old code (on the tiny SD1
model with diffusers 0.42.1 it still gave the same pixels as this module with fixed destinations; checked
once by hand, it is not a dependency), and its random destinations come from a fork of the global RNG,
so an image depends on what ran before it. Here the
merge plan is made by a forward pre-hook on each transformer block (from the block's input, as tomesd
does) and applied by an attention processor on its `attn1` (diffusers' extension point), both removed
after the call; the destinations come from a generator seeded per call and are drawn once per block and
model evaluation (shared by the CFG halves, as tomesd shares them within a batch), so a request gives the
same image every time, whichever memory strategy runs it. The bipartite matching below follows tomesd's `bipartite_soft_matching_random2d`
(MIT licence).
"""

from __future__ import annotations

__all__ = ["TokenMerging", "bipartite_merge", "draw_destinations"]

_SEED = 0  # of the generator drawing destination tokens, per pipeline call


def draw_destinations(w: int, h: int, generator, sx: int = 2, sy: int = 2):
    """Which token of each sx x sy cell of a w x h grid is a destination: [h // sy, w // sx, 1] indices."""
    import torch

    return torch.randint(sy * sx, size=(h // sy, w // sx, 1), generator=generator)


def bipartite_merge(metric, w: int, h: int, r: int, destinations=None, sx: int = 2, sy: int = 2):
    """(merge, unmerge) for tokens [B, N, C] of a w x h grid: `r` source tokens merged into destinations.

    Destinations are one token per sx x sy cell (`destinations`, from `draw_destinations`; None: the top
    left of each); each source token goes to its most similar destination (cosine), the `r` most similar
    sources are merged (averaged into it) and the rest kept.
    """
    import torch

    B, N, _ = metric.shape
    with torch.no_grad():
        hsy, wsx = h // sy, w // sx
        if destinations is None:
            destinations = torch.zeros(hsy, wsx, 1, dtype=torch.int64)
        rand_idx = destinations.to(metric.device)
        # -1 marks the destination of each cell, 0 the sources; argsort puts destinations first
        view = torch.zeros(hsy, wsx, sy * sx, device=metric.device, dtype=torch.int64)
        view.scatter_(dim=2, index=rand_idx, src=-torch.ones_like(rand_idx))
        view = view.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
        if hsy * sy < h or wsx * sx < w:  # a grid that the strides do not divide: the rest are sources
            grid = torch.zeros(h, w, device=metric.device, dtype=torch.int64)
            grid[: hsy * sy, : wsx * sx] = view
        else:
            grid = view
        order = grid.reshape(1, -1, 1).argsort(dim=1)
        num_dst = hsy * wsx
        a_idx, b_idx = order[:, num_dst:, :], order[:, :num_dst, :]  # sources, destinations

        def split(x):
            c = x.shape[-1]
            return (torch.gather(x, 1, a_idx.expand(B, N - num_dst, c)),
                    torch.gather(x, 1, b_idx.expand(B, num_dst, c)))

        normed = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(normed)
        scores = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx, src_idx = edge_idx[..., r:, :], edge_idx[..., :r, :]
        dst_idx = torch.gather(node_idx[..., None], -2, src_idx)

    def merge(x):
        src, dst = split(x)
        n, t1, c = src.shape
        unm = torch.gather(src, -2, unm_idx.expand(n, t1 - r, c))
        src = torch.gather(src, -2, src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x):
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        c = unm.shape[-1]
        src = torch.gather(dst, -2, dst_idx.expand(B, r, c))
        out = torch.zeros(B, N, c, device=x.device, dtype=x.dtype)
        out.scatter_(-2, b_idx.expand(B, num_dst, c), dst)
        sources = a_idx.expand(B, a_idx.shape[1], 1)
        out.scatter_(-2, torch.gather(sources, 1, unm_idx).expand(B, unm_len, c), unm)
        out.scatter_(-2, torch.gather(sources, 1, src_idx).expand(B, r, c), src)
        return out

    return merge, unmerge


class _Plan:
    """What the hooks share during one call: the latent grid, the destinations, the current block's plan."""

    def __init__(self, ratio: float):
        import torch

        self.ratio = ratio
        self.grid: tuple[int, int] | None = None  # latent (h, w) of the current UNet call
        self.generator = torch.Generator("cpu").manual_seed(_SEED)
        self.destinations: dict[int, object] = {}  # block -> destinations drawn for the current model evaluation
        self.current = None  # (merge, unmerge) for the next attn1, or None
        self.merged_tokens = 0  # tokens removed from self-attention inputs, over the call
        self.attentions = 0  # self-attentions that ran on merged tokens


class _MergingProcessor:
    """attn1's processor: its own processor on the merged tokens, the output unmerged."""

    def __init__(self, inner, plan: _Plan):
        self.inner, self.plan = inner, plan

    def __call__(self, attn, hidden_states, *args, **kwargs):
        current, self.plan.current = self.plan.current, None
        if current is None:
            return self.inner(attn, hidden_states, *args, **kwargs)
        merge, unmerge = current
        merged = merge(hidden_states)
        self.plan.merged_tokens += hidden_states.shape[1] - merged.shape[1]
        self.plan.attentions += 1
        return unmerge(self.inner(attn, merged, *args, **kwargs))


class TokenMerging:
    """Token merging on `unet`'s self-attention at full latent resolution, for a `with` block."""

    def __init__(self, unet, ratio: float):
        self.unet, self.plan = unet, _Plan(ratio)
        self._handles: list = []
        self._processors: list = []

    def _blocks(self):
        from diffusers.models.attention import BasicTransformerBlock

        return [m for m in self.unet.modules() if isinstance(m, BasicTransformerBlock)]

    def __enter__(self) -> TokenMerging:
        plan = self.plan

        def on_unet(_module, args, kwargs):
            sample = args[0] if args else kwargs["sample"]
            plan.grid = tuple(sample.shape[-2:])
            plan.destinations = {}  # a new model evaluation: new random destinations

        def on_block(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            h, w = plan.grid
            plan.current = None
            if x.shape[1] == h * w:
                # one draw per block and model evaluation, shared by every image and CFG half of it, also when
                # the batch-split strategy calls the UNet once per sample (so the image does not depend on it)
                if id(module) not in plan.destinations:
                    plan.destinations[id(module)] = draw_destinations(w, h, plan.generator)
                plan.current = bipartite_merge(x, w, h, int(x.shape[1] * plan.ratio), plan.destinations[id(module)])

        self._handles.append(self.unet.register_forward_pre_hook(on_unet, with_kwargs=True))
        for block in self._blocks():
            self._handles.append(block.register_forward_pre_hook(on_block, with_kwargs=True))
            self._processors.append((block.attn1, block.attn1.processor))
            block.attn1.set_processor(_MergingProcessor(block.attn1.processor, plan))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for attn, processor in self._processors:
            attn.set_processor(processor)
        self._handles.clear()
        self._processors.clear()
