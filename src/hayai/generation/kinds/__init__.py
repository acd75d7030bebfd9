"""The pipeline kinds: one home each (txt2img, img2img, inpaint, hires), and the registry.

Adding a kind is a new module here and a line in `KINDS`: the engine asks `kind_of(request)` and
calls the kind's methods (see `base.PipelineKind`).
"""

from __future__ import annotations

from hayai.generation.kinds.base import BatchRun, PipelineKind
from hayai.generation.kinds.hires import Hires
from hayai.generation.kinds.img2img import Img2Img
from hayai.generation.kinds.inpaint import Inpaint
from hayai.generation.kinds.txt2img import Txt2Img

__all__ = ["KINDS", "kind_of", "plan_request", "BatchRun", "PipelineKind"]

KINDS: dict[str, PipelineKind] = {kind.name: kind for kind in (Txt2Img(), Img2Img(), Inpaint(), Hires())}


def kind_of(request) -> PipelineKind:
    return KINDS[request.kind]


def plan_request(request):
    """What the planner plans for a resolved request (`hayai.memory.planner.PlanRequest`): its kind's largest
    pass, its batch, whether CFG doubles the denoiser's batch, and the steps its kind really runs."""
    from hayai.memory.planner import PlanRequest

    kind = kind_of(request)
    width, height = kind.plan_size(request)
    return PlanRequest(width, height, request.batch_size, request.cfg_scale > 1, kind.steps_run(request))
