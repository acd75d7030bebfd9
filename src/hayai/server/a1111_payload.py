"""AUTOMATIC1111's txt2img / img2img payloads, read into hayai requests, and its responses written back.

The payload schema is made from the one field table (`hayai.generation.fields`, its `api` column) plus
the keys A1111's own model adds (`modules/api/models.py`). Keys that only make sense in A1111 are
accepted at the values clients send by default (the `webuiapi` client sends about 46 keys on every
call); a value that asks for something hayai does not do (face restoration, tiling, variation seeds,
scripts, styles, a refiner) is refused with a 400 naming the key, never silently ignored. Sampler knobs
hayai does not expose (eta, s_churn, ...) are reported in the response's `info.hayai.ignored`.

Defaults that differ from hayai's CLI are A1111's API defaults, since A1111 clients count on them:
inpainting starts from "fill" over "only masked" with padding 0, the hires pass from 2x. Where a client
leaves out steps, CFG, sampler or size, the model's own recommendation is used (A1111 would take 50
steps, CFG 7, 512x512 whatever the model).
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from hayai.errors import RequestError
from hayai.generation.fields import FIELDS, MASKED_CONTENT, RESIZE_MODES
from hayai.generation.samplers import SCHEDULE_TYPES

__all__ = ["Txt2ImgRequest", "Img2ImgRequest", "to_fields", "SCHEDULERS", "info_json", "OPTION_KEYS"]

# A1111's scheduler names (`sd_schedulers.schedulers`) for the schedule types hayai has
SCHEDULERS = {"automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
              "beta": "Beta", "sgm_uniform": "SGM Uniform", "simple": "Simple"}
assert set(SCHEDULERS.values()) == set(SCHEDULE_TYPES)

# field-table rows whose `api` name is one of A1111's options (/sdapi/v1/options, override_settings), not a payload key
OPTION_KEYS = {"sd_model_checkpoint": "model", "CLIP_stop_at_last_layers": "clip_skip"}
_TYPES = {"str": Optional[str], "int": Optional[int], "float": Optional[float], "bool": Optional[bool]}
_SPECIAL = {  # payload keys whose A1111 type is not the field's
    "init_images": (Optional[list[str]], None), "resize_mode": (Union[int, str], 0),
    "inpainting_fill": (Union[int, str], 0), "inpainting_mask_invert": (Union[int, bool], 0),
    "inpaint_full_res": (Union[bool, int], True), "inpaint_full_res_padding": (int, 0), "mask_blur": (Optional[int], None),
    "denoising_strength": (Optional[float], None), "hr_scale": (float, 2.0), "hr_upscaler": (Optional[str], None),
    "hr_second_pass_steps": (int, 0), "hr_resize_x": (int, 0), "hr_resize_y": (int, 0),
}
# A1111 keys hayai accepts at these values (what clients send by default) and refuses otherwise
_ONLY_DEFAULT: dict[str, tuple[Any, ...]] = {
    "restore_faces": (None, False), "tiling": (None, False), "subseed_strength": (None, 0, 0.0),
    "seed_resize_from_h": (None, -1, 0), "seed_resize_from_w": (None, -1, 0), "styles": (None, []),
    "script_name": (None, ""), "refiner_checkpoint": (None, "", "None"), "firstphase_width": (None, 0),
    "firstphase_height": (None, 0), "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "hr_scheduler": (None, "", "Use same scheduler"), "latent_mask": (None,), "initial_noise_multiplier": (None, 1, 1.0),
    "disable_extra_networks": (None, False),
}
_IGNORED = ("eta", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "image_cfg_scale", "subseed",
            "do_not_save_samples", "do_not_save_grid", "comments", "force_task_id", "sampler_index",
            "override_settings_restore_afterwards", "include_init_images", "mask_blur_x", "mask_blur_y", "script_args")
_EXTRA: dict[str, tuple[Any, Any]] = {
    "sampler_index": (Optional[str], None), "scheduler": (Optional[str], None), "script_name": (Optional[str], None),
    "script_args": (list, []), "send_images": (bool, True), "save_images": (bool, False),
    "alwayson_scripts": (dict, {}), "override_settings": (Optional[dict], None),
    "override_settings_restore_afterwards": (bool, True), "restore_faces": (Optional[bool], None),
    "tiling": (Optional[bool], None), "styles": (Optional[list[str]], None), "subseed": (int, -1),
    "subseed_strength": (float, 0), "seed_resize_from_h": (int, -1), "seed_resize_from_w": (int, -1),
    "eta": (Optional[float], None), "s_min_uncond": (Optional[float], None), "s_churn": (Optional[float], None),
    "s_tmax": (Optional[float], None), "s_tmin": (Optional[float], None), "s_noise": (Optional[float], None),
    "do_not_save_samples": (bool, False), "do_not_save_grid": (bool, False), "refiner_checkpoint": (Optional[str], None),
    "refiner_switch_at": (Optional[float], None), "disable_extra_networks": (bool, False), "comments": (Optional[dict], None),
    "force_task_id": (Optional[str], None), "infotext": (Optional[str], None),
}
_TXT2IMG_EXTRA = {"enable_hr": (bool, False), "firstphase_width": (int, 0), "firstphase_height": (int, 0),
                  "hr_checkpoint_name": (Optional[str], None), "hr_scheduler": (Optional[str], None)}
_IMG2IMG_EXTRA = {"mask_blur_x": (int, 4), "mask_blur_y": (int, 4), "image_cfg_scale": (Optional[float], None),
                  "initial_noise_multiplier": (Optional[float], None), "latent_mask": (Optional[str], None),
                  "include_init_images": (bool, False)}


ROUTE_KINDS = {"txt2img": ("txt2img", "hires"), "img2img": ("img2img", "inpaint")}  # the pipeline kinds of each route


def _model(name: str, kinds: tuple[str, ...], extra: dict) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for spec in FIELDS:
        if not spec.api or spec.api in OPTION_KEYS or (spec.kinds and not set(spec.kinds) & set(kinds)):
            continue
        annotation, default = _SPECIAL.get(spec.api, (_TYPES.get(spec.type, Optional[str]), None))
        fields[spec.api] = (annotation, Field(default, description=spec.help.replace("\\[", "[")))
    for key, (annotation, default) in {**_EXTRA, **extra}.items():
        fields.setdefault(key, (annotation, default))
    return create_model(name, __config__=ConfigDict(extra="allow"), **fields)


Txt2ImgRequest = _model("StableDiffusionTxt2ImgProcessingAPI", ROUTE_KINDS["txt2img"], _TXT2IMG_EXTRA)
Img2ImgRequest = _model("StableDiffusionImg2ImgProcessingAPI", ROUTE_KINDS["img2img"], _IMG2IMG_EXTRA)


def to_fields(payload: dict[str, Any], kind: str, options: dict[str, Any]) -> tuple[dict, dict, list[str]]:
    """(GenerationRequest fields, base64 images by field, ignored keys) of an A1111 payload.

    `options` are the server's A1111 options (`sd_model_checkpoint`, ...); `override_settings` overrides them
    for this job only, as in A1111."""
    for key, allowed in _ONLY_DEFAULT.items():
        if key in payload and payload[key] not in allowed:
            raise RequestError(f"{key}={payload[key]!r} is not supported by hayai (it would be ignored); leave it out "
                               f"or at {allowed[1]!r}")
    for script, block in (payload.get("alwayson_scripts") or {}).items():
        if isinstance(block, dict) and block.get("args"):
            raise RequestError(f"alwayson_scripts: {script!r} is not a script hayai has (GET /sdapi/v1/scripts lists none)")
    by_api = {spec.api: spec for spec in FIELDS if spec.api}
    fields: dict[str, Any] = {}
    for key, value in payload.items():
        spec = by_api.get(key)
        if spec is None or key in OPTION_KEYS or key in ("init_images", "mask") or value is None:
            continue
        if spec.kinds and not set(spec.kinds) & set(ROUTE_KINDS[kind]):
            continue
        fields[spec.name] = value
    settings = {**options, **(payload.get("override_settings") or {})}
    for key, name in OPTION_KEYS.items():
        if settings.get(key) not in (None, ""):
            fields[name] = settings[key]
    if isinstance(settings.get("token_merging_ratio"), (int, float)) and settings["token_merging_ratio"] > 0:
        fields["token_merging"] = float(settings["token_merging_ratio"])  # A1111's ToMe option (0: off, hayai's default)
    if settings.get("samples_format") in ("png", "jpg", "webp"):
        fields["image_format"] = settings["samples_format"]
    if settings.get("img2img_fix_steps") and kind == "img2img":
        fields["denoise_steps"] = "exact"
    if fields.get("sampler") is None and payload.get("sampler_index"):
        fields["sampler"] = payload["sampler_index"]  # A1111's deprecated spelling, used when sampler_name is not sent
    scheduler = payload.get("scheduler")
    if scheduler not in (None, ""):
        fields["schedule_type"] = _schedule_type(scheduler)
    images: dict[str, str | None] = {}
    if kind == "txt2img":
        _hires(payload, fields)
    else:
        _image_to_image(payload, fields, images)
    ignored = [key for key in _IGNORED if key in payload and payload[key] not in (None, [], {}, False, 0, -1, 1, 1.0, 4)]
    return fields, images, ignored


def _schedule_type(value: str) -> str:
    if value in SCHEDULE_TYPES:
        return value
    found = SCHEDULERS.get(str(value).lower().replace(" ", "_"))
    if found is None:
        raise RequestError(f"scheduler={value!r} is unknown; choose one of: {', '.join(SCHEDULERS)}")
    return found


def _hires(payload: dict, fields: dict) -> None:
    if not payload.get("enable_hr"):
        for name in ("hr_scale", "hr_resize_x", "hr_resize_y", "hr_upscaler", "hr_steps", "hr_sampler", "hr_prompt",
                     "hr_negative_prompt", "denoising_strength"):
            fields.pop(name, None)
        return
    fields.setdefault("hr_scale", 2.0)
    fields.setdefault("denoising_strength", 0.75)
    if fields.get("hr_sampler") in ("Use same sampler", ""):
        fields.pop("hr_sampler")
    for name in ("hr_prompt", "hr_negative_prompt"):
        if fields.get(name) == "":
            fields.pop(name)
    if fields.get("hr_upscaler") in (None, ""):
        fields.pop("hr_upscaler", None)


def _image_to_image(payload: dict, fields: dict, images: dict) -> None:
    init = payload.get("init_images") or []
    if not init:
        raise RequestError("init_images: img2img needs an image (a list with one base64 image)")
    if len(init) > 1:
        raise RequestError(f"init_images: hayai takes one init image per request, not {len(init)}")
    images["init_image"] = init[0]
    if payload.get("mask"):
        images["mask"] = payload["mask"]
        fields.setdefault("masked_content", 0)  # A1111's API defaults, not its UI's
        fields.setdefault("inpaint_only_masked", True)
        fields.setdefault("inpaint_padding", 0)
        blur_x, blur_y = payload.get("mask_blur_x", 4), payload.get("mask_blur_y", 4)
        if payload.get("mask_blur") is None and (blur_x, blur_y) != (4, 4):
            if blur_x != blur_y:
                raise RequestError(f"mask_blur_x={blur_x} and mask_blur_y={blur_y}: hayai blurs the mask the same "
                                   "both ways; send mask_blur")
            fields["mask_blur"] = blur_x
    else:
        for name in ("masked_content", "inpaint_only_masked", "inpaint_padding", "mask_blur", "mask_invert"):
            fields.pop(name, None)
    if "mask_invert" in fields:
        fields["mask_invert"] = bool(fields["mask_invert"])
    if "inpaint_only_masked" in fields:
        fields["inpaint_only_masked"] = bool(fields["inpaint_only_masked"])
    for name, names in (("resize_mode", RESIZE_MODES), ("masked_content", MASKED_CONTENT)):
        value = fields.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < len(names):
            raise RequestError(f"{name}={value} must be 0..{len(names) - 1}: {', '.join(names)}")
    fields.setdefault("denoising_strength", 0.75)


def info_json(result: dict, request: dict, job_id: str, ignored: list[str], warnings: list[str]) -> str:
    """`info` of A1111's response: `Processed.js()`, a JSON string, plus hayai's own facts under "hayai"."""
    resolved = result.get("request", request)
    images = result.get("images", [])
    seeds = [image["seed"] for image in images] or [resolved.get("seed")]
    count = max(1, len(images))
    return json.dumps({
        "prompt": resolved["prompt"], "all_prompts": [resolved["prompt"]] * count,
        "negative_prompt": resolved["negative_prompt"], "all_negative_prompts": [resolved["negative_prompt"]] * count,
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
        "width": resolved.get("width"), "height": resolved.get("height"), "sampler_name": resolved.get("sampler"),
        "cfg_scale": resolved.get("cfg_scale"), "steps": resolved.get("steps"), "batch_size": resolved["batch_size"],
        "restore_faces": False, "face_restoration_model": None, "sd_model_name": result.get("model"),
        "sd_model_hash": result.get("model_hash"), "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": resolved.get("denoising_strength"),
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [image.get("infotext", "") for image in images], "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": resolved.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False,
        "hayai": {"job": job_id, "strategy": result.get("strategy"), "plan": result.get("plan_reason"),
                  "timings": result.get("timings"), "peak_memory_bytes": result.get("peak_memory_bytes"),
                  "warnings": warnings, "ignored": ignored, "interrupted": result.get("interrupted", False),
                  "run_id": result.get("run_id")},
    })
