"""AUTOMATIC1111's API (`/sdapi/v1/...`), as its clients call it (`webuiapi`, Krita and Photoshop plug-ins,
bots). txt2img and img2img are synchronous views of hayai's queue: the job is queued like any other, the
call returns when it has run. Shapes follow A1111's `modules/api/models.py`; see ../shared/REFERENCE.md."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from hayai.errors import RequestError
from hayai.generation.fields import LATENT_UPSCALERS, PIXEL_UPSCALERS
from hayai.server.a1111_payload import SCHEDULERS, Img2ImgRequest, Txt2ImgRequest, info_json, to_fields
from hayai.server.app import submit, wait_for
from hayai.server.images import encode_png
from hayai.server.requests import check_request, queued_request
from hayai.server.tasks import with_seed

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 API"])


def _state(request: Request):
    return request.app.state.hayai


async def _generate(request: Request, body, kind: str):
    state = _state(request)
    payload = body.model_dump(exclude_unset=True)
    fields, images, ignored = to_fields(payload, kind, state.options)
    fields.setdefault("prompt", "")
    labels = {"init_image": "init_images[0]", "mask": "mask"}
    queued = await asyncio.to_thread(queued_request, fields, images=images, labels=labels)  # off the event loop
    check_request(state.catalog, queued)
    save = bool(payload.get("save_images", False))
    job, _ = submit(state, "generate", with_seed(queued).to_dict(), api="a1111", submitted=payload,
                    options={"save": save, "send_images": payload.get("send_images", True)},
                    idempotency_key=payload.get("force_task_id"))
    job, live = await wait_for(state, job.id)
    if job.status == "error":
        internal = (job.error or "").startswith("internal error")
        return JSONResponse({"error": "GenerationError", "detail": job.error, "body": None, "errors": job.error},
                            status_code=500 if internal else 400)
    result = job.result or {}
    pictures = live.images if live is not None else []
    encoded = await asyncio.to_thread(lambda: [encode_png(image, text) for image, text in pictures]) \
        if payload.get("send_images", True) else []
    if live is not None:
        live.images = []  # handed over: the live record keeps no pixels
    echoed = {**payload}
    if not payload.get("include_init_images"):
        echoed.update({key: None for key in ("init_images", "mask") if key in echoed})
    return {"images": encoded, "parameters": echoed,
            "info": info_json(result, queued.to_dict(), job.id, ignored, result.get("warnings", []))}


@router.post("/txt2img")
async def txt2img(request: Request, body: Txt2ImgRequest):
    return await _generate(request, body, "txt2img")


@router.post("/img2img")
async def img2img(request: Request, body: Img2ImgRequest):
    return await _generate(request, body, "img2img")


@router.get("/progress")
def progress(request: Request, skip_current_image: bool = False):
    return _state(request).live.a1111_progress(skip_current_image)


@router.post("/interrupt")
def interrupt(request: Request):
    current = _state(request).live.current
    if current is not None:
        current.cancel.interrupt()
    return {}


@router.post("/skip")
def skip(request: Request):
    current = _state(request).live.current
    if current is not None:
        current.cancel.skip()
    return {}


@router.get("/options")
def get_options(request: Request):
    from hayai.server.catalogs import title_of

    state = _state(request)
    options = dict(state.options)
    try:
        options["sd_model_checkpoint"] = title_of(state.catalog, options.get("sd_model_checkpoint"))
    except Exception:  # the saved model is gone: say so by name rather than fail the whole listing
        pass
    return options


@router.post("/options")
def set_options(request: Request, changes: dict = Body(...)):
    _state(request).set_options(changes)
    return None


@router.get("/cmd-flags")
def cmd_flags(request: Request):
    config = _state(request).config
    return {"api": True, "nowebui": True, "listen": not config.loopback, "port": config.port,
            "server_name": config.host, "api_auth": None if not config.auth else "(set)",
            "cors_allow_origins": list(config.cors_allow) or None, "skip_torch_cuda_test": False}


@router.get("/samplers")
def samplers():
    from hayai.generation.samplers import SAMPLERS

    return [{"name": name, "aliases": [], "options": {}} for name in SAMPLERS]


@router.get("/schedulers")
def schedulers():
    return [{"name": name, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
            for name, label in SCHEDULERS.items()]


@router.get("/upscalers")
def upscalers():
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
            for name in PIXEL_UPSCALERS]


@router.get("/latent-upscale-modes")
def latent_upscale_modes():
    return [{"name": name} for name in LATENT_UPSCALERS]


@router.get("/sd-models")
def sd_models(request: Request):
    from hayai.server.catalogs import sd_models as listing

    return listing(_state(request).catalog)


@router.get("/loras")
def loras(request: Request):
    from hayai.server.catalogs import loras as listing

    return listing(_state(request).store)


@router.post("/refresh-checkpoints")
def refresh_checkpoints():
    return None  # the catalog is scanned on every listing: nothing is cached to refresh


@router.post("/refresh-loras")
def refresh_loras():
    return None


@router.post("/unload-checkpoint")
def unload_checkpoint(request: Request):
    _state(request).engine.unload_all()  # every resident model but one a running job uses
    return None


@router.post("/reload-checkpoint")
def reload_checkpoint():
    return None  # models load when a job needs them


@router.get("/memory")
def memory(request: Request):
    import psutil

    engine = _state(request).engine
    ram = psutil.virtual_memory()
    result = {"ram": {"free": ram.available, "used": ram.total - ram.available, "total": ram.total},
              "hayai": {"resident_models": engine.resident(), "resident_budget_bytes": engine.resident_budget_bytes}}
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        result["cuda"] = {
            "system": {"free": free, "used": total - free, "total": total},
            "active": {"current": stats.get("active_bytes.all.current", 0), "peak": stats.get("active_bytes.all.peak", 0)},
            "allocated": {"current": stats.get("allocated_bytes.all.current", 0),
                          "peak": stats.get("allocated_bytes.all.peak", 0)},
            "reserved": {"current": stats.get("reserved_bytes.all.current", 0),
                         "peak": stats.get("reserved_bytes.all.peak", 0)},
            "inactive": {"current": stats.get("inactive_split_bytes.all.current", 0),
                         "peak": stats.get("inactive_split_bytes.all.peak", 0)},
            "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)},
        }
    else:
        result["cuda"] = {"error": "no CUDA device"}
    return result


@router.get("/scripts")
def scripts():
    return {"txt2img": [], "img2img": []}  # hayai has no A1111 scripts (ControlNet, ADetailer, ...)


def _nothing() -> list:
    return []


# listings of what A1111 has and hayai does not (VAE overrides, hypernetworks, face restorers, styles, ...):
# clients read them, so they answer, empty
for _path in ("script-info", "extensions", "sd-vae", "hypernetworks", "face-restorers", "realesrgan-models",
              "prompt-styles"):
    router.add_api_route(f"/{_path}", _nothing, methods=["GET"], name=_path.replace("-", "_"))


@router.get("/embeddings")
def embeddings():
    return {"loaded": {}, "skipped": {}}


@router.post("/png-info")
def png_info(body: dict = Body(...)):
    from hayai.generation.infotext import parse_infotext
    from hayai.server.images import decode_image
    from hayai.server.requests import ImageInputError

    data = body.get("image")
    if not data:
        raise RequestError("image: send the PNG as base64 in 'image'")
    try:
        image = decode_image(data, "image")
    except RequestError as error:
        raise ImageInputError(str(error)) from None
    items = {key: value for key, value in image.info.items() if isinstance(value, str)}
    text = items.pop("parameters", None)
    if text is None:
        return {"info": "", "items": items, "parameters": {}}
    parsed = parse_infotext(text)
    parameters = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt, **parsed.params}
    if "Size" in parsed.params and "x" in parsed.params["Size"]:
        parameters["Size-1"], parameters["Size-2"] = parsed.params["Size"].split("x", 1)
    return {"info": text, "items": items, "parameters": parameters}
