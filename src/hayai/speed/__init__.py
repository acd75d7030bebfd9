"""Speed levers: less work per image, each a request knob whose time and quality cost is measured.

- `presets`: the named presets (`exact`, `balanced`, `fast`) and the knobs they set; pure data.
- `step_cache`: DeepCache-style reuse of the deep UNet features between steps.
- `token_merging`: ToMe for the UNet's self-attention.
- `block_cache`: diffusers' first-block cache for transformers (SD3, Flux): the blocks after the first are
  skipped on steps where the first block's output barely changed. The UNet keeps `step_cache`, as
  diffusers' step caches need a flat list of transformer blocks.
- `levers`: the one place a pipeline call gets the levers its request asks for (`applied`).
- `hooks`: what the step caches share on diffusers' hook registry (a lever's state, evaluation starts).
- `tiny_vae`: a tiny autoencoder (AutoencoderTiny, e.g. TAESD) in place of the model's VAE.
- `few_step`: few-step LoRAs and models (LCM, TCD, Hyper-SD, Lightning, Turbo) and the settings they need.
- `quality`: PSNR and SSIM between images, for the benchmark's distance to the exact run.
- `bench`: every lever measured against the exact run on this machine (`hayai bench speed`), kept in the store.
- `execution`: execution levers (channels-last, compile, OpenVINO): how a run computes, on for a model only where a
  measurement made here shows that it pays and keeps the pixels.
- `regional_compile`: the denoiser's repeated blocks compiled by torch.compile (the `compile` execution
  lever), on only where its measured per-step gain pays back the compilation still owed.
- `openvino`: the UNet converted to OpenVINO (the `[openvino]` extra), cached by model hash and size; an
  execution lever on the CPU only where its measured per-step gain pays back the conversion.

The levers are request fields (`hayai.generation.fields`), not plan options: like steps or the sampler
they change the image, so they are recorded in the infotext, reproduced by `--from` and swept as axes;
the planner decides only how a request runs (device, dtype, offload), never what it draws. Execution
levers are the other kind: they change only how fast (the image up to float rounding), so the engine
chooses them from measurements and the image's record names them.

Importing this package imports nothing heavy.
"""
