"""`hayai plan` in an A1111 user's words: each strategy shown is named by the flag it is nearest to."""

from __future__ import annotations

from inprocess import hayai


def test_plan_names_the_a1111_flags_and_the_cpu_row_needs_no_gpu_memory():
    text = hayai("plan", "-m", "arch:sd15", "--device", "GTX 1650 4GB", "--all").stdout
    assert "model_offload: one model (text encoder, UNet, VAE) on the GPU at a time: ~ A1111 --medvram" in text
    assert "sequential_offload: every layer moves to the GPU when called: ~ A1111 --lowvram" in text
    assert "te_offload: text encoders wait in RAM" in text and "float32: float32 on a GPU: ~ A1111 --no-half" in text
    cpu_row = next(line for line in text.splitlines() if line.strip().startswith("cpu-float32"))
    assert cpu_row.split()[1:4] == ["(RAM)", "-", "-"]  # was "no  0.00": it needs no GPU memory at all
