"""The one table of request fields: what each is, and how every front end names it. Pure data.

Each `GenerationRequest` field has one row here: its type, default, range or choices, help text, the
CLI flags, A1111's API name (`/sdapi/v1/txt2img` payload), A1111's X/Y/Z plot label (sweep axes) and
its infotext key. The CLI options (`hayai.cli.request_options`), the sweep axes (`hayai.sweep.axes`),
the infotext writer and reader (`hayai.generation.infotext`) and the request's own range checks are
made from these rows, so a new field is one row (plus its line in the dataclass) and every front end
knows it. Importing this module imports nothing heavy: the CLI reads it to build `--help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hayai.speed.presets import DESCRIPTIONS, PRESETS

__all__ = ["RequestField", "FIELDS", "FIELD", "RESIZE_MODES", "MASKED_CONTENT", "DENOISE_STEPS", "LATENT_UPSCALERS",
           "PIXEL_UPSCALERS", "INFOTEXT_DEFAULTS"]

# A1111's img2img resize modes (modules/ui.py), in A1111's order: the API sends their index
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# A1111's "Masked content" (inpainting_fill), in A1111's order
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
# how many steps an image-to-image pass runs for `steps` and a denoising strength s:
#   a1111:     int(min(s, 0.999) * steps) + 1, as A1111 runs by default
#   exact:     `steps` exactly (A1111's "img2img_fix_steps" option; hires passes always run this way)
#   diffusers: int(steps * s), as diffusers' img2img and inpaint pipelines run
DENOISE_STEPS = ("a1111", "exact", "diffusers")
# A1111's latent upscale modes (shared.latent_upscale_modes): name -> (torch interpolate mode, antialias)
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# pixel upscalers built in (A1111's UpscalerNone/Lanczos/Nearest); model files (ESRGAN family) come from the catalog
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest")


@dataclass(frozen=True)
class RequestField:
    name: str  # the GenerationRequest attribute
    type: str  # "str", "int", "float", "bool", "sizes" (a list of ints), "strs" (a list of strings)
    default: Any
    help: str  # one line; what `--help` shows (escape '[' as '\\[': rich reads help as markup)
    flags: tuple[str, ...] = ()  # CLI flags ("--steps",); () = not a CLI option of its own
    api: str | None = None  # A1111's API payload name
    label: str | None = None  # A1111's X/Y/Z plot label; a field with a label is a sweep axis
    aliases: tuple[str, ...] = ()  # more names a sweep axis accepts
    infotext: str | None = None  # A1111's infotext key
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    reloads_model: bool = False  # changing it loads another model (sweeps run such cells grouped)
    kinds: tuple[str, ...] = ()  # the pipeline kinds it applies to; () = all


_F = RequestField

FIELDS: tuple[RequestField, ...] = (
    _F("prompt", "str", None, "What to draw (A1111-style prompt).", api="prompt"),
    _F("negative_prompt", "str", "", "Negative prompt.", ("--negative", "-n"), api="negative_prompt"),
    _F("model", "str", None, "Model name, path, hub id (local cache only), or arch:sd15 / arch:sdxl / arch:sd35m.",
       ("--model", "-m"), api="sd_model_checkpoint", label="Checkpoint name",
       aliases=("checkpoint", "ckpt", "checkpoint_name", "sd_model_checkpoint"), infotext="Model", reloads_model=True),
    _F("model_config", "str", None, "Single-file checkpoints: a diffusers folder with the component configs.",
       ("--model-config",)),
    _F("steps", "int", None, "Denoising steps \\[the model card's, else 20].", ("--steps",), api="steps", label="Steps", infotext="Steps",
       minimum=1, maximum=1000),
    _F("cfg_scale", "float", None, "CFG scale \\[the model card's, else 7].", ("--cfg",), api="cfg_scale", label="CFG Scale",
       aliases=("cfg", "guidance", "guidance_scale"), infotext="CFG scale", minimum=0.0, maximum=100.0),
    _F("sampler", "str", None, "A1111 sampler name, e.g. \"Euler a\", \"DPM++ 2M\" \\[the model card's, else the family's].",
       ("--sampler",),
       api="sampler_name", label="Sampler", aliases=("sampler_name",), infotext="Sampler"),
    _F("schedule_type", "str", "Automatic",
       "Schedule type: Automatic, Uniform, Karras, Exponential, Beta, SGM Uniform, Simple.", ("--schedule",),
       api="scheduler", label="Schedule type", aliases=("schedule", "scheduler"), infotext="Schedule type"),
    _F("width", "int", None, "Width in pixels \\[the model's native size].", ("--width", "-W"), api="width",
       label="Width", aliases=("w",), minimum=64, maximum=8192),
    _F("height", "int", None, "Height in pixels \\[the model's native size].", ("--height", "-H"), api="height",
       label="Height", aliases=("h",), minimum=64, maximum=8192),
    _F("seed", "int", -1, "Seed; -1 for random \\[-1]. Image i of a run gets seed+i.", ("--seed", "-s"), api="seed",
       label="Seed", infotext="Seed"),
    _F("batch_size", "int", 1, "Images per pass \\[1].", ("--batch-size", "-b"), api="batch_size", label="Batch size",
       aliases=("batch", "b"), minimum=1, maximum=64),
    _F("batch_count", "int", 1, "Passes \\[1].", ("--batch-count", "-c"), api="n_iter", label="Batch count",
       aliases=("n_iter",), minimum=1, maximum=10000),
    _F("clip_skip", "int", 1, "A1111 clip skip (1 = none) \\[1].", ("--clip-skip",), api="CLIP_stop_at_last_layers",
       label="Clip skip", infotext="Clip skip", minimum=1, maximum=12),
    _F("output_dir", "str", None, "Output folder \\[$HAYAI_HOME/outputs].", ("--output", "-o")),
    _F("filename_pattern", "str", "{index:05d}-{seed}", "File name pattern \\[{index:05d}-{seed}].", ("--pattern",)),
    _F("image_format", "str", "png", "png, jpg or webp \\[png].", ("--format",), choices=("png", "jpg", "webp")),
    _F("loras", "strs", (), "NAME:W or NAME:TE_W:UNET_W; repeat for several. <lora:NAME:W> in the prompt works too.",
       ("--lora", "-l")),
    _F("lora_partial", "bool", False, "Apply a LoRA even if some of its keys match no layer (a warning, not an error).",
       ("--lora-partial",)),
    # -- image to image (img2img, inpainting) -----------------------------------------------------
    _F("init_image", "str", None, "The image to start from (img2img, inpainting).", ("--image",), api="init_images", kinds=("img2img", "inpaint")),
    _F("denoising_strength", "float", 0.75,
       "Denoising strength: 0 keeps the input, 1 replaces it (img2img, inpainting, hires passes) \\[0.75].",
       ("--strength", "--denoise"), api="denoising_strength", label="Denoising",
       aliases=("denoise", "strength", "denoising_strength", "hires_denoise"), infotext="Denoising strength",
       minimum=0.0, maximum=1.0, kinds=("img2img", "inpaint", "hires")),
    _F("denoise_steps", "str", "a1111",
       "Steps an image-to-image pass runs: a1111 (int(strength*steps)+1), exact (steps), diffusers (int(steps*strength)).",
       ("--denoise-steps",), infotext="Denoise steps", choices=DENOISE_STEPS, kinds=("img2img", "inpaint")),
    _F("resize_mode", "str", "Just resize",
       "How the input image is fitted to the size: Just resize, Crop and resize, Resize and fill, "
       "Just resize (latent upscale).", ("--resize-mode",), api="resize_mode", choices=RESIZE_MODES, kinds=("img2img", "inpaint")),
    _F("mask", "str", None, "Inpainting mask: white = redraw (or the image's alpha when it has one).", ("--mask",),
       api="mask", kinds=("inpaint",)),
    _F("mask_blur", "int", 4, "Mask blur in pixels \\[4].", ("--mask-blur",), api="mask_blur", label="Mask blur",
       infotext="Mask blur", minimum=0, maximum=256, kinds=("inpaint",)),
    _F("mask_invert", "bool", False, "Redraw what the mask leaves black instead.", ("--invert-mask",),
       api="inpainting_mask_invert", infotext="Mask mode", kinds=("inpaint",)),
    _F("masked_content", "str", "original", "What the masked area starts from: fill, original, latent noise, "
       "latent nothing \\[original].", ("--masked-content",), api="inpainting_fill", label="Masked content",
       infotext="Masked content", choices=MASKED_CONTENT, kinds=("inpaint",)),
    _F("inpaint_only_masked", "bool", False, "Redraw only the masked region at full size, then paste it back.",
       ("--only-masked",), api="inpaint_full_res", infotext="Inpaint area", kinds=("inpaint",)),
    _F("inpaint_padding", "int", 32, "Pixels around the mask kept as context with --only-masked \\[32].",
       ("--mask-padding",), api="inpaint_full_res_padding", infotext="Masked area padding", minimum=0, maximum=1024, kinds=("inpaint",)),
    # -- hires fix and progressive upscaling -----------------------------------------------------
    _F("hr_scale", "float", 1.0, "Hires fix: upscale the first pass by this factor, then redraw (1 = off).",
       ("--hires",), api="hr_scale", label="Hires upscale", aliases=("hires", "hr_scale"), infotext="Hires upscale",
       minimum=1.0, maximum=8.0, kinds=("hires",)),
    _F("hr_resize_x", "int", 0, "Hires fix: final width instead of a factor (0 = from --hires).", ("--hires-width",),
       api="hr_resize_x", minimum=0, maximum=8192, kinds=("hires",)),
    _F("hr_resize_y", "int", 0, "Hires fix: final height instead of a factor (0 = from --hires).", ("--hires-height",),
       api="hr_resize_y", minimum=0, maximum=8192, kinds=("hires",)),
    _F("hr_upscaler", "str", "Latent", "Hires upscaler: Latent, Latent (bicubic), ... (A1111's latent modes), Lanczos, Nearest "
       "\\[Latent].", ("--upscaler",), api="hr_upscaler", label="Hires upscaler",
       aliases=("upscaler",), infotext="Hires upscaler", kinds=("hires",)),
    _F("hr_steps", "int", 0, "Steps of each hires pass (0 = --steps).", ("--hires-steps",), api="hr_second_pass_steps",
       label="Hires steps", aliases=("hr_second_pass_steps",), infotext="Hires steps", minimum=0, maximum=1000, kinds=("hires",)),
    _F("hr_sampler", "str", None, "Sampler of the hires passes \\[the first pass's].", ("--hires-sampler",),
       api="hr_sampler_name", label="Hires sampler", infotext="Hires sampler", kinds=("hires",)),
    _F("hr_prompt", "str", None, "Prompt of the hires passes \\[the prompt].", ("--hires-prompt",), api="hr_prompt",
       infotext="Hires prompt", kinds=("hires",)),
    _F("hr_negative_prompt", "str", None, "Negative prompt of the hires passes \\[the negative prompt].",
       ("--hires-negative",), api="hr_negative_prompt", infotext="Hires negative prompt", kinds=("hires",)),
    _F("progressive", "sizes", (), "Progressive upscaling: the long side of every pass, e.g. 512,768,1024.",
       ("--progressive",), infotext="Progressive", kinds=("hires",)),
    # -- speed levers (hayai.speed): a preset, and the raw knobs it fills when they are left unset ---------
    _F("speed", "str", "exact", "Speed preset: " + ", ".join(f"{name} ({DESCRIPTIONS[name]})" for name in PRESETS)
       + " \\[exact]. The knobs below override it.", ("--speed",), label="Speed", aliases=("speed_preset",),
       infotext="Speed", choices=tuple(PRESETS)),
    _F("step_cache", "int", None, "Step caching (DeepCache-style, UNet models): run the deep UNet blocks every N steps "
       "and reuse their output between (0 or 1 = off) \\[the --speed preset's].", ("--step-cache",),
       label="Step cache", aliases=("deepcache", "cache_interval"), infotext="Step cache", minimum=0, maximum=100),
    _F("token_merging", "float", None, "Token merging (ToMe, UNet models): the share of self-attention tokens merged "
       "at the full latent resolution (0 = off) \\[the --speed preset's].", ("--token-merging", "--tome"),
       label="Token merging ratio", aliases=("tome", "token_merging_ratio"), infotext="Token merging ratio",
       minimum=0.0, maximum=0.9),
    _F("block_cache", "float", None, "Block caching (first-block cache, SD3 and Flux models): on a step where the "
       "first transformer block's output changed by less than this share since the last full step, skip the "
       "blocks after it and reuse their change (0 = off; e.g. 0.1; in no --speed preset).", ("--block-cache",),
       label="Block cache", aliases=("fbcache", "first_block_cache"), infotext="Block cache", minimum=0.0,
       maximum=1.0),
    _F("tiny_vae", "str", None, "A tiny autoencoder to decode (and encode) with instead of the model's VAE: a "
       "diffusers AutoencoderTiny folder you have, e.g. TAESD (faster, softer detail).", ("--tiny-vae",),
       label="Tiny VAE", aliases=("taesd",), infotext="Tiny VAE"),
)

FIELD: dict[str, RequestField] = {f.name: f for f in FIELDS}

# what A1111's reader (`parse_generation_parameters`) assumes for a key an infotext leaves out: these keys are
# written only when their value differs
INFOTEXT_DEFAULTS = {
    "Clip skip": "1", "Mask mode": "Inpaint masked", "Masked content": "original", "Inpaint area": "Whole picture",
    "Masked area padding": "32", "Denoise steps": "a1111", "Speed": "exact",
}
