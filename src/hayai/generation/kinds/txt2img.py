"""Text to image: the plain pipeline call of each family."""

from __future__ import annotations

from hayai.generation.kinds.base import BatchRun, PipelineKind
from hayai.models.families import FAMILY_INFO

__all__ = ["Txt2Img"]


class Txt2Img(PipelineKind):
    name = "txt2img"
    classes = {family: info.pipeline_class for family, info in FAMILY_INFO.items()}

    def run(self, batch: BatchRun, request, seeds):
        return batch.call(self.pipeline(batch.loaded), request, seeds, {}, request.steps)
