"""Latent consistency distillation into a LoRA (LCM-LoRA: Luo et al. 2023, arXiv:2310.04378 and 2311.05556):
the objective of `hayai train distill`.

The model being trained is the model plus a LoRA; the teacher is the same model with the LoRA off. For
a clean latent x0 and a point of a 50-step DDIM skipping schedule (timesteps 19, 39, ..., 999; LCM's
`original_inference_steps`), one training example is:

1. `x_t`: x0 noised to the schedule's timestep t (DDPM's `add_noise`);
2. the teacher's guided step from t to s = t - 20: its conditional and unconditional predictions
   combined with classifier-free guidance at `teacher_cfg` (A1111's scale: cond + (cfg - 1) (cond - uncond),
   on the predicted x0 and noise alike), then one DDIM step to `x_s`;
3. the student's clean-image estimate at (x_t, t) must equal the LoRA's own estimate at (x_s, s),
   taken without gradient: f(x, t) = c_skip(t) x + c_out(t) x0_pred(x, t), with LCM's boundary
   conditions (sigma_data 0.5, timesteps scaled by 10; so f(x, 0) = x);
4. the loss is the pseudo-Huber distance sqrt(d^2 + c^2) - c with c = 0.001, averaged per example.

This is diffusers' `train_lcm_distill_lora_sd_wds.py` recipe (a fixed guidance scale rather than one drawn
per example: a LoRA has no input for it), and `LCMScheduler` with `original_inference_steps=50` samples
from what it learns. After distillation the LoRA samples in 2-8 steps at CFG 1 (no unconditional pass),
so a 4-step image costs 4 denoiser calls where 20 guided steps cost 40.

Validation: the same loss at fixed schedule points and noise per held-out image (`VALIDATION_TIMESTEPS`
points spread over the schedule), so its trend is comparable across steps and resumes. It measures
self-consistency against the teacher's steps, not image quality; the sample grids (4 LCM steps) and the
speed benchmark's adherence figure show that.
"""

from __future__ import annotations

import torch

from hayai.errors import RequestError
from hayai.models.families import FAMILY_INFO, Family
from hayai.training.objective import _VALIDATION_SEED, VALIDATION_TIMESTEPS, Draw, Predict

__all__ = ["DDIM_STEPS", "ConsistencyObjective", "HUBER_C", "boundary_scalings"]

DDIM_STEPS = 50  # the teacher's skipping schedule (LCM's original_inference_steps, LCMScheduler's default)
HUBER_C = 0.001  # diffusers' pseudo-Huber constant for LCM
SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # LCMScheduler's timestep_scaling


def boundary_scalings(timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's c_skip and c_out at integer `timesteps` (LCMScheduler.get_scalings_for_boundary_condition_discrete)."""
    scaled = timesteps.to(torch.float32) * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


class ConsistencyObjective:
    """The LCM loss for noise- or velocity-prediction models (SD1, SD2, SDXL); `network` is the LoRA being
    trained, switched off for the teacher's predictions."""

    guided = True  # needs the unconditional embedding (the empty caption) for the teacher's guidance

    def __init__(self, family: Family, scheduler_config: dict, network, *, teacher_cfg: float) -> None:
        from diffusers import DDPMScheduler

        family = Family(family)
        if FAMILY_INFO[family].flow_matching:
            raise RequestError(f"method='lcm' distils noise-prediction models (SD1, SD2, SDXL); {family.value} is a "
                               "flow-matching model: use its distilled releases (SD3.5 Large Turbo, Hyper-SD3) instead")
        scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise RequestError(f"method='lcm': the model predicts {self.prediction_type!r}; distillation supports "
                               "epsilon and v_prediction models")
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas = scheduler.alphas_cumprod.to(torch.float32)
        self.skip = self.num_timesteps // DDIM_STEPS
        self.timesteps = torch.arange(1, DDIM_STEPS + 1) * self.skip - 1  # 19, 39, ..., 999
        self.network = network
        self.guidance = float(teacher_cfg) - 1.0  # A1111's scale: cond + (cfg - 1) (cond - uncond)
        self.min_snr_gamma = None

    # -- draws: noise and a point of the skipping schedule ---------------------------------------------
    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> Draw:
        noise = torch.randn(shape, generator=generator)
        return Draw(noise, torch.randint(0, DDIM_STEPS, (shape[0],), generator=generator))

    def validation_draws(self, shape: tuple[int, ...], example: int) -> list[Draw]:
        generator = torch.Generator().manual_seed(_VALIDATION_SEED + example)
        return [Draw(torch.randn(shape, generator=generator),
                     torch.full((shape[0],), int((k + 0.5) / VALIDATION_TIMESTEPS * DDIM_STEPS), dtype=torch.long))
                for k in range(VALIDATION_TIMESTEPS)]

    # -- the loss --------------------------------------------------------------------------------------
    def _alpha(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) at `timesteps`, shaped to broadcast over `like`."""
        alpha = self.alphas.to(like.device)[timesteps.to(like.device)].view(-1, *([1] * (like.ndim - 1)))
        return alpha.sqrt(), (1.0 - alpha).sqrt()

    def _x0_and_noise(self, output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor):
        a, b = self._alpha(timesteps, sample)
        output, sample = output.float(), sample.float()
        if self.prediction_type == "v_prediction":
            return a * sample - b * output, a * output + b * sample
        return (sample - b * output) / a, output

    def _consistency(self, output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """f(x, t): the boundary-conditioned clean-image estimate."""
        x0, _ = self._x0_and_noise(output, sample, timesteps)
        c_skip, c_out = (c.to(sample.device).view(-1, *([1] * (sample.ndim - 1))) for c in boundary_scalings(timesteps))
        return c_skip * sample.float() + c_out * x0

    def example_losses(self, latents: torch.Tensor, draw: Draw, predict: Predict, cond: dict, uncond: dict | None = None,
                       *, weighted: bool = True) -> torch.Tensor:
        """Per-example pseudo-Huber distance between the student's estimate at t and the LoRA's own estimate
        after the teacher's guided DDIM step to s (`weighted` has no effect: LCM weighs every example alike)."""
        if uncond is None:
            raise ValueError("the consistency objective needs the unconditional embedding for the teacher's guidance")
        index = draw.index.to(latents.device)
        start = self.timesteps.to(latents.device)[index]
        end = (start - self.skip).clamp(min=0)
        a, b = self._alpha(start, latents)
        noisy = (a * latents.float() + b * draw.noise.to(latents.device).float()).to(latents.dtype)
        # The three passes without gradient come first: run after the student's, their activations would sit on
        # top of the ones it keeps for the backward pass; run before, the step peaks no higher than a LoRA
        # step's, which is what the training memory plan counts.
        with torch.no_grad():
            self.network.set_enabled(False)
            try:
                x0_c, eps_c = self._x0_and_noise(predict(noisy, start, cond), noisy, start)
                x0_u, eps_u = self._x0_and_noise(predict(noisy, start, uncond), noisy, start)
            finally:
                self.network.set_enabled(True)
            x0 = x0_c + self.guidance * (x0_c - x0_u)
            eps = eps_c + self.guidance * (eps_c - eps_u)
            a_end, b_end = self._alpha(end, latents)
            stepped = (a_end * x0 + b_end * eps).to(latents.dtype)
            target = self._consistency(predict(stepped, end, cond), stepped, end)
        estimate = self._consistency(predict(noisy, start, cond), noisy, start)
        distance = ((estimate - target) ** 2 + HUBER_C**2).sqrt() - HUBER_C
        return distance.mean(dim=tuple(range(1, distance.ndim)))
