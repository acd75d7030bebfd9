"""Several training processes: `torchrun --nproc_per_node 2` (what `accelerate launch --multi_gpu` runs) on the CPU.

Two processes with batch 1 each must train what one process with batch 2 trains: the same global batches
in the same order, the same noise, the gradients summed across processes. (accelerate's own CPU
multi-process mode needs MPI, which this machine does not have; torchrun is the launcher accelerate uses
for GPUs, and the loop talks to the processes through accelerate's PartialState either way.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hayai.demo.shapes import samples
from hayai.models.families import Family
from hayai.training import TrainConfig, train_lora


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tiny_folders, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    data = tmp_path / "pics"
    data.mkdir()
    for i, (_, caption, image) in enumerate(samples(4, 6)):
        image.save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(caption)
    settings = dict(dataset=str(data), model=str(tiny_folders[Family.SD1]), steps=3, rank=4, learning_rate=1e-3,
                    validation_every=3, checkpoint_every=3, sample_every=0, caption_dropout=0.3)
    single = train_lora(TrainConfig(output_name="single", batch_size=2, **settings))

    config = tmp_path / "two.yaml"
    config.write_text(TrainConfig(output_name="two", batch_size=1, **settings).to_yaml())
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "hayai", "train", "lora",
                           str(config), "--json"], capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)  # printed by the first process only
    assert two["config"]["batch_size"] == 1 and two["step"] == 3
    for (step, mine), (_, theirs) in zip(two["losses"], single.losses):
        assert mine == pytest.approx(theirs, rel=1e-5), step
    ours, reference = load_file(two["files"]["kohya"]), load_file(single.files["kohya"])
    assert ours.keys() == reference.keys()
    assert all(torch.allclose(ours[k], reference[k], rtol=1e-4, atol=1e-5) for k in ours)  # sums in another order
    assert max(float(reference[k].abs().max()) for k in reference if "lora_up" in k) > 1e-4  # it trained
    assert torch.isfinite(torch.tensor(two["validation"])).all()
