"""The pickle policy: even with --allow-pickle, a checkpoint is read as tensors only, so no code in it runs."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from hayai.cli.main import app
from hayai.errors import ModelError, UnsafeCheckpointError
from hayai.models.families import Family
from hayai.models.loading import source_from_path

SD1_KEYS = {  # the keys family detection looks at, shrunk
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768),
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (10, 768),
}


class _RunsCode:
    """Unpickling this calls open(marker, "w"): proof that the file's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state():
    return {key: torch.zeros(shape) for key, shape in SD1_KEYS.items()}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_none(tmp_path, zipped):
    marker, path = tmp_path / "MARKER", tmp_path / "evil.ckpt"
    torch.save({"state_dict": _state(), "callbacks": _RunsCode(marker)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt holds Python objects besides tensors \(Unsupported global: GLOBAL io\.open\)"):
        source_from_path(path, allow_pickle=True)
    result = CliRunner().invoke(app, ["generate", "a cat", "--model", str(path), "--allow-pickle", "--steps", "1"])
    assert isinstance(result.exception, UnsafeCheckpointError) and result.exception.exit_code == 2
    assert not marker.exists()


def test_a_legacy_non_zip_checkpoint_is_read_not_a_mmap_traceback(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": _state(), "global_step": 470000}, path, _use_new_zipfile_serialization=False)
    assert source_from_path(path, allow_pickle=True).family is Family.SD1


@pytest.mark.parametrize(("content", "reason"), [
    (b"not a checkpoint at all" * 8, r"not a readable PyTorch checkpoint \(Unsupported operand"),
    (None, r"odd\.ckpt is not a readable PyTorch checkpoint \(.+\)$"),
    ([1, 2], r"holds no state dict \(a list\)"),
])
def test_damaged_or_odd_checkpoints_are_one_line_errors(tmp_path, content, reason):
    path = tmp_path / "odd.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is None:  # cut in half, as by a failed copy
        torch.save(_state(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save(content, path)
    with pytest.raises(ModelError, match=reason):
        source_from_path(path, allow_pickle=True)
