"""`hayai train distill`: the consistency objective's parts against diffusers' LCM scheduler, and a distillation
run on the tiny SD1 pipeline through the LoRA training machinery (validation, samples, exact resume, files)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from hayai.cli.main import app
from hayai.errors import RequestError
from hayai.lora.catalog import loras_dir
from hayai.models.families import Family
from hayai.speed.few_step import METADATA_KEY, detect_file
from hayai.training import TrainConfig, train_lora
from hayai.training.consistency import DDIM_STEPS, ConsistencyObjective, boundary_scalings

from test_train_loop import _dataset

SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


class _Network:
    def __init__(self) -> None:
        self.enabled = True

    def set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled


def test_the_schedule_and_boundary_conditions_are_those_lcm_scheduler_samples_with():
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_config(SCHEDULE)
    scheduler.set_timesteps(DDIM_STEPS)  # with as many steps as the original schedule, LCM visits every point of it
    objective = ConsistencyObjective(Family.SD1, SCHEDULE, _Network(), teacher_cfg=7.0)
    assert sorted(scheduler.timesteps.tolist()) == objective.timesteps.tolist()
    for t in (0, 19, 259, 999):
        c_skip, c_out = boundary_scalings(torch.tensor([t]))
        theirs = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert (float(c_skip), float(c_out)) == pytest.approx(tuple(float(x) for x in theirs), rel=1e-6)
    assert boundary_scalings(torch.tensor([0])) == (1.0, 0.0)  # f(x, 0) = x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_clean_image_and_noise_are_read_back_from_either_prediction(prediction_type):
    objective = ConsistencyObjective(Family.SD1, {**SCHEDULE, "prediction_type": prediction_type}, _Network(), teacher_cfg=1.0)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((2, 4, 8, 8), generator=generator), torch.randn((2, 4, 8, 8), generator=generator)
    t = torch.tensor([39, 799])
    a, b = objective._alpha(t, x0)
    noisy = a * x0 + b * noise
    output = noise if prediction_type == "epsilon" else a * noise - b * x0
    got_x0, got_noise = objective._x0_and_noise(output, noisy, t)
    assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_noise, noise, atol=1e-4)


def test_the_teacher_runs_without_the_lora_and_guided_while_the_student_and_target_run_with_it():
    network = _Network()
    objective = ConsistencyObjective(Family.SD1, SCHEDULE, network, teacher_cfg=5.0)
    calls = []

    def predict(noisy, timesteps, cond):
        calls.append((network.enabled, cond["name"], timesteps.tolist(), torch.is_grad_enabled()))
        return torch.zeros_like(noisy) + (0.1 if cond["name"] == "cond" else -0.1)

    draw = objective.draw((2, 4, 8, 8), torch.Generator().manual_seed(3))
    losses = objective.example_losses(torch.ones((2, 4, 8, 8)), draw, predict, {"name": "cond"}, {"name": "uncond"})
    start = objective.timesteps[draw.index].tolist()
    end = [max(0, t - 1000 // DDIM_STEPS) for t in start]
    assert calls == [(False, "cond", start, False), (False, "uncond", start, False),  # the teacher: LoRA off, guided
                     (True, "cond", end, False),  # the target: the LoRA one step later, no gradient
                     (True, "cond", start, True)]  # the student, with gradient, last: nothing runs on top of what it keeps
    assert network.enabled and losses.shape == (2,) and torch.all(losses > 0)


def test_flow_matching_models_and_text_encoder_training_are_refused_with_the_reason(tiny_folders, tmp_path):
    with pytest.raises(RequestError, match="flow-matching"):
        ConsistencyObjective(Family.SD3, SCHEDULE, _Network(), teacher_cfg=5.0)
    with pytest.raises(RequestError, match="train_text_encoder"):
        TrainConfig(method="lcm", train_text_encoder=True)
    with pytest.raises(RequestError, match="method="):
        TrainConfig(method="dmd")


def _distill(tiny_folders, dataset, name, **overrides):
    settings = dict(dataset=str(dataset), model=str(tiny_folders[Family.SD1]), output_name=name, method="lcm", steps=4,
                    batch_size=2, rank=4, learning_rate=1e-3, checkpoint_every=2, validation_every=2, sample_every=0,
                    validation_fraction=0.25, teacher_cfg=4.0)
    return TrainConfig(**{**settings, **overrides})


def test_a_distillation_resumes_exactly_and_writes_a_few_step_lora(tiny_folders, tmp_path):
    """The same machinery as LoRA training: validation, checkpoints, an interrupted run resumed bit for bit,
    and a LoRA whose metadata makes it a 4-step LCM LoRA of this model."""
    dataset = _dataset(tmp_path / "data")
    whole = train_lora(_distill(tiny_folders, dataset, "whole-lcm", sample_every=4))

    def interrupt(event):
        if event.phase == "train" and event.step == 1:
            raise KeyboardInterrupt

    stopped = train_lora(_distill(tiny_folders, dataset, "split-lcm"), progress=interrupt)
    assert (stopped.status, stopped.step) == ("interrupted", 1)
    resumed = train_lora(TrainConfig(output_name="split-lcm"), resume=True)
    assert resumed.status == "ok" and resumed.losses == whole.losses and resumed.validation == whole.validation
    mine, theirs = load_file(resumed.files["kohya"]), load_file(whole.files["kohya"])
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert any(theirs[k].abs().max() > 0 for k in theirs if "lora_up" in k)  # it trained
    assert len(whole.validation) == 3 and all(v > 0 for _, v in whole.validation)
    assert whole.config["teacher_cfg"] == 4.0 and whole.config["min_snr_gamma"] is None
    assert "samples" in whole.files  # drawn with the LCM sampler at 4 steps

    with safe_open(str(whole.lora_path), "pt") as handle:
        metadata = handle.metadata()
    few_step = json.loads(metadata[METADATA_KEY])
    assert few_step["method"] == "LCM" and few_step["steps"] == 4 and few_step["model_hash"] == metadata["ss_new_sd_model_hash"]
    found = detect_file(whole.lora_path)
    assert (found.method, found.steps, found.cfg_scale, found.sampler) == ("LCM", 4, 1.0, "LCM")


def test_train_distill_on_the_command_line_names_its_lora_and_how_to_use_it(tiny_folders, tmp_path):
    dataset = _dataset(tmp_path / "data")
    result = CliRunner().invoke(app, ["train", "distill", "--dataset", str(dataset), "--model", str(tiny_folders[Family.SD1]),
                                      "--steps", "1", "--batch-size", "2", "--rank", "2", "--sample-every", "0",
                                      "--distill-steps", "2"])
    assert result.exit_code == 0, result.output
    name = f"{tiny_folders[Family.SD1].name}-lcm-2step"
    assert f"{name}.safetensors" in result.output and "--speed fast" in result.output
    assert detect_file(loras_dir() / f"{name}.safetensors").steps == 2
