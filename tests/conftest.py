"""Shared fixtures: an isolated user dir for every test, and tiny model folders built once.

No test may touch the user's real files: for the whole session $HOME and $HAYAI_HOME point into a temporary
folder (set before any fixture runs, so module- and session-scoped fixtures are covered too), and every test
then gets its own $HAYAI_HOME on top (`hayai_home`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hayai.models.families import Family
from hayai.models.tiny import save_tiny_pipeline


_SESSION_HOME: Path | None = None


def pytest_configure(config):
    """Point $HOME and $HAYAI_HOME at a throwaway folder for the whole run, before any fixture or import."""
    global _SESSION_HOME
    _SESSION_HOME = Path(tempfile.mkdtemp(prefix="hayai-tests-home-"))
    os.environ["HOME"] = str(_SESSION_HOME)
    os.environ["HAYAI_HOME"] = str(_SESSION_HOME / ".hayai")
    os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_unconfigure(config):
    if _SESSION_HOME is not None:
        shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Torch on one thread, here and in the `hayai` processes the tests start (OMP_NUM_THREADS below).

    The tiny models are 10-25x faster without thread hand-offs on a shared 2-core machine, and a process
    compared pixel for pixel with another must round its floats the same way.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def hayai_home(tmp_path, monkeypatch):
    """Every test gets its own $HAYAI_HOME and an empty, offline Hugging Face cache."""
    home = tmp_path / "hayai_home"
    monkeypatch.setenv("HAYAI_HOME", str(home))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return home


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[Family, object]:
    """Diffusers folders of the tiny SD1, SDXL and SD3 pipelines (random weights, seed 0)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: save_tiny_pipeline(family, root / f"tiny-{family.value}") for family in (Family.SD1, Family.SDXL, Family.SD3)}
