"""The training objective of each family: how a clean latent is noised, what the denoiser must predict,
and how the squared errors are weighted.

- SD1/SD2/SDXL (noise prediction, diffusers' `train_text_to_image_lora*.py`): a timestep uniform in
  [0, T), `x_t = sqrt(ab) x0 + sqrt(1 - ab) noise` (DDPM's `add_noise`), target `noise` (or the velocity
  for v-prediction models); optional noise offset (a per-channel constant added to the noise) and
  min-SNR-gamma weights `min(snr, gamma) / snr` (`/ (snr + 1)` for v-prediction; Hang et al. 2023).
- SD3 (rectified flow, diffusers' `train_dreambooth_lora_sd3.py`): sigma from the model's shifted
  schedule at a logit-normal position, `x_t = (1 - sigma) x0 + sigma noise`, target `noise - x0`.

Distillation into a few-step LoRA has its own objective (`hayai.training.consistency`), with the same
methods (`draw`, `validation_draws`, `example_losses`), so the loop runs either.

Random draws come from a CPU generator (the run's, saved in checkpoints), so a run is the same on any
device and resumes exactly. Validation uses fixed draws: for each example, evenly spaced timesteps with
noise from a generator seeded by the example's index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hayai.models.families import FAMILY_INFO, Family

__all__ = ["Draw", "Objective", "Predict", "VALIDATION_TIMESTEPS", "predict"]

VALIDATION_TIMESTEPS = 4  # per validation image, evenly spaced over the schedule
_VALIDATION_SEED = 1_000_003
# the denoiser with the LoRA on a batch: (noisy latents, the timesteps it is told, conditioning) -> its output
Predict = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


@dataclass
class Draw:
    noise: torch.Tensor  # like the latents
    index: torch.Tensor  # [B] long: position in the training schedule (timestep, or sigma index)


class Objective:
    def __init__(self, family: Family, scheduler_config: dict, *, noise_offset: float = 0.0,
                 min_snr_gamma: float | None = None) -> None:
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

        self.family = Family(family)
        self.flow = FAMILY_INFO[self.family].flow_matching
        self.noise_offset = noise_offset
        self.min_snr_gamma = min_snr_gamma or None
        if self.flow:
            self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
            self.sigmas = self.scheduler.sigmas.to(torch.float32)[: self.scheduler.config.num_train_timesteps]
            self.schedule_timesteps = self.scheduler.timesteps.to(torch.float32)[: len(self.sigmas)]
            self.prediction_type = "flow"
        else:
            self.scheduler = DDPMScheduler.from_config(scheduler_config)
            self.prediction_type = self.scheduler.config.prediction_type
        self.num_timesteps = int(self.scheduler.config.num_train_timesteps)

    # -- draws -------------------------------------------------------------------------------------
    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> Draw:
        """Noise and schedule positions for a batch of latents of `shape`, from `generator` (CPU)."""
        batch = shape[0]
        noise = torch.randn(shape, generator=generator)
        if self.flow:  # logit-normal (mean 0, std 1): diffusers' default weighting_scheme for SD3
            u = torch.sigmoid(torch.randn((batch,), generator=generator))
            index = (u * self.num_timesteps).long().clamp(max=self.num_timesteps - 1)
        else:
            index = torch.randint(0, self.num_timesteps, (batch,), generator=generator)
            if self.noise_offset:
                noise = noise + self.noise_offset * torch.randn((batch, shape[1], 1, 1), generator=generator)
        return Draw(noise, index)

    def validation_draws(self, shape: tuple[int, ...], example: int) -> list[Draw]:
        """`VALIDATION_TIMESTEPS` fixed draws for validation example `example` (no noise offset)."""
        generator = torch.Generator().manual_seed(_VALIDATION_SEED + example)
        draws = []
        for k in range(VALIDATION_TIMESTEPS):
            position = int((k + 0.5) / VALIDATION_TIMESTEPS * self.num_timesteps)
            draws.append(Draw(torch.randn(shape, generator=generator), torch.full((shape[0],), position, dtype=torch.long)))
        return draws

    # -- the example and its target ------------------------------------------------------------------
    def model_timesteps(self, index: torch.Tensor) -> torch.Tensor:
        """What the denoiser is told: the DDPM timestep, or SD3's timestep (sigma * T)."""
        return self.schedule_timesteps.to(index.device)[index] if self.flow else index

    def noisy_and_target(self, latents: torch.Tensor, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
        noise = draw.noise.to(latents.device, latents.dtype)
        index = draw.index.to(latents.device)
        if self.flow:
            sigma = self.sigmas.to(latents.device)[index].view(-1, 1, 1, 1).to(latents.dtype)
            return (1.0 - sigma) * latents + sigma * noise, noise - latents
        noisy = self.scheduler.add_noise(latents, noise, index)
        if self.prediction_type == "v_prediction":
            return noisy, self.scheduler.get_velocity(latents, noise, index)
        return noisy, noise

    def weights(self, index: torch.Tensor) -> torch.Tensor | None:
        """Per-example loss weights (min-SNR-gamma), or None for a plain mean."""
        if self.flow or not self.min_snr_gamma:
            return None
        alphas = self.scheduler.alphas_cumprod.to(index.device)[index].to(torch.float32)
        snr = alphas / (1.0 - alphas)
        clipped = torch.clamp(snr, max=self.min_snr_gamma)
        return clipped / (snr + 1.0) if self.prediction_type == "v_prediction" else clipped / snr

    def example_losses(self, latents: torch.Tensor, draw: Draw, predict: Predict, cond: dict, uncond: dict | None = None,
                       *, weighted: bool = True) -> torch.Tensor:
        """Per-example squared error of the denoiser's prediction (min-SNR weighted unless `weighted` is False:
        validation compares plain errors). `predict(noisy, timesteps, cond)` runs the denoiser with the LoRA."""
        noisy, target = self.noisy_and_target(latents, draw)
        prediction = predict(noisy, self.model_timesteps(draw.index), cond)
        per_example = ((prediction.float() - target.float()) ** 2).mean(dim=tuple(range(1, prediction.ndim)))
        weights = self.weights(draw.index.to(per_example.device)) if weighted else None
        return per_example * weights if weights is not None else per_example

    @staticmethod
    def loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error in float32 (per example, weighted, then averaged)."""
        per_example = ((prediction.float() - target.float()) ** 2).mean(dim=tuple(range(1, prediction.ndim)))
        if weights is not None:
            per_example = per_example * weights.to(per_example.device)
        return per_example.mean()


def predict(denoiser, family: Family, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict,
            time_ids: torch.Tensor | None = None) -> torch.Tensor:
    """One denoiser call with the family's conditioning (text embeddings, pooled embeddings, size ids)."""
    family = Family(family)
    if family is Family.SD3:
        return denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=cond["embeds"],
                        pooled_projections=cond["pooled"]).sample
    if family is Family.SDXL:
        return denoiser(noisy, timesteps, encoder_hidden_states=cond["embeds"],
                        added_cond_kwargs={"text_embeds": cond["pooled"], "time_ids": time_ids}).sample
    return denoiser(noisy, timesteps, encoder_hidden_states=cond["embeds"]).sample
