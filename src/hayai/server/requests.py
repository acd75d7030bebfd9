"""A request that came over HTTP, made safe to queue: what a local server must not let a web page do.

The CLI trusts its user: a model, a LoRA, an input image or an output folder may be any path. A request
to the server may come from any program on the machine (or, with --listen, the network), so here:
- models and LoRAs are named, never given as paths: only what the catalogs list (or `arch:`) runs, so
  no request makes the server read an arbitrary file, and pickle checkpoints never load;
- input images arrive as base64 and are kept by content in `$HAYAI_HOME/inputs` (`images.keep_b64_image`);
- images are written only to the output folder (`output_dir` and `model_config` are refused);
- the seed is drawn when the job is queued (`hayai.store.jobs`), so a job run again after a restart makes
  the same images.
"""

from __future__ import annotations

from typing import Any

from hayai.errors import RequestError
from hayai.generation.request import GenerationRequest
from hayai.server.images import keep_b64_image

__all__ = ["ImageInputError", "queued_request", "check_request", "NOT_OVER_HTTP"]

NOT_OVER_HTTP = ("output_dir", "model_config", "tiny_vae")  # request fields that name paths on the server


class ImageInputError(RequestError):
    """An input image that is not valid base64 or not an image (HTTP 422, naming the field)."""


def queued_request(fields: dict[str, Any], *, images: dict[str, str | None] | None = None,
                   labels: dict[str, str] | None = None) -> GenerationRequest:
    """The request to queue from `fields` (GenerationRequest names) and base64 `images` by field name;
    `labels` names the images' fields as the client knows them, in errors."""
    refused = [name for name in NOT_OVER_HTTP if fields.get(name) is not None]
    if refused:
        raise RequestError(f"{refused[0]} names a path on the server and cannot be set over HTTP; the server "
                           "writes to its output folder and loads only models from its catalog")
    for name in ("init_image", "mask"):
        if fields.get(name) is not None:
            raise RequestError(f"{name}: send the image as base64 (init_images / mask), not a path")
    kept = {}
    for name, data in (images or {}).items():
        if data is not None:
            try:
                kept[name] = keep_b64_image(data, (labels or {}).get(name, name))
            except RequestError as error:
                raise ImageInputError(str(error)) from None
    return GenerationRequest.from_dict({**fields, **kept})


def check_request(catalog, request: GenerationRequest) -> None:
    """Refuse a request that names a model or a LoRA by path, or a model the server's catalog lacks."""
    from hayai.server.catalogs import check_model

    _check_names(request)
    if request.model is not None:
        check_model(catalog, request.model)


def _check_names(request: GenerationRequest) -> None:
    from hayai.lora.apply import LoraSpec
    from hayai.prompts.parser import parse_prompt

    if request.tiny_vae is not None:  # a folder on the server (a sweep axis may set it too)
        raise RequestError("tiny_vae names a folder on the server and cannot be set over HTTP")
    if request.model is not None and _looks_like_path(request.model):
        raise RequestError(f"model={request.model!r}: name a model from GET /sdapi/v1/sd-models; the server loads "
                           "no model by path (add it on the server with `hayai models add PATH`)")
    names = [LoraSpec.parse(text).name for text in request.loras]
    names += [tag.name for text in (request.prompt, request.negative_prompt) for tag in parse_prompt(text).loras]
    for name in names:
        if _looks_like_path(name) or name.lower().endswith(".safetensors"):
            raise RequestError(f"LoRA {name!r}: name a LoRA from GET /sdapi/v1/loras; the server loads no LoRA by "
                               "path (put the file in the server's LoRA folder)")


def _looks_like_path(name: str) -> bool:
    lowered = name.lower()
    return ("/" in name or "\\" in name or name.startswith(("~", ".")) or (":" in name and not lowered.startswith("arch:"))
            or lowered.endswith((".ckpt", ".pt", ".pth", ".bin", ".pkl")))
