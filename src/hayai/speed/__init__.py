"""Speed levers: less work per image, each a request knob whose time and quality cost is measured.

- `presets`: the named presets (`exact`, `balanced`) and the knobs they set; pure data.
- `step_cache`: DeepCache-style reuse of the deep UNet features between steps.
- `token_merging`: ToMe for the UNet's self-attention.
- `levers`: the one place a pipeline call gets the levers its request asks for (`applied`).
- `few_step`: few-step LoRAs and models (LCM, TCD, Hyper-SD, Lightning, Turbo) and the settings they need.
- `quality`: PSNR and SSIM between images, for the benchmark's distance to the exact run.

Importing this package imports nothing heavy.
"""
