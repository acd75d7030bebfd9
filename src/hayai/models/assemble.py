"""A diffusers pipeline of another class (or with parts left out) over a loaded pipeline's own modules.

What diffusers' `from_pipe` does, without its cast of every shared module to one dtype (float32 unless
told), which would undo a half-precision, fp8 or split placement of the pipeline the modules belong to.
Offload hooks live on the modules, so they keep working; the model-offload bookkeeping is copied so
diffusers re-arms the hooks after each call, as it does for the original pipeline.
"""

from __future__ import annotations

import inspect

__all__ = ["assemble"]


def assemble(pipe, cls=None, **replace):
    """A `cls` pipeline (default: `pipe`'s own class) over `pipe`'s components and config, with `replace`
    overriding components (e.g. `text_encoder=None`)."""
    cls = cls or type(pipe)
    given = {**{k: v for k, v in pipe.config.items() if not k.startswith("_")}, **pipe.components, **replace}
    accepted = inspect.signature(cls.__init__).parameters
    view = cls(**{name: given[name] for name in accepted if name in given})
    for attribute in ("_all_hooks", "_offload_gpu_id", "_offload_device"):
        if hasattr(pipe, attribute):
            setattr(view, attribute, getattr(pipe, attribute))
    view.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return view
