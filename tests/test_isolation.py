"""The test run never touches the user's real files, not even from fixtures that outlive one test."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from hayai import paths

REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)


@pytest.fixture(scope="module")
def home_seen_by_a_module_fixture() -> Path:
    """Module-scoped fixtures run before the per-test `hayai_home`: they must be isolated too."""
    return paths.hayai_home()


def test_module_fixtures_use_a_temporary_hayai_home(home_seen_by_a_module_fixture):
    assert not home_seen_by_a_module_fixture.is_relative_to(REAL_HOME)
    assert not Path.home().is_relative_to(REAL_HOME)
    assert Path(os.path.expanduser("~")) == Path.home()


def test_each_test_gets_its_own_hayai_home(hayai_home, home_seen_by_a_module_fixture):
    assert paths.hayai_home() == hayai_home and hayai_home != home_seen_by_a_module_fixture


def test_in_process_cli_exits_2_with_one_line_for_bad_input():
    from inprocess import hayai

    proc = hayai("generate", "x", "--steps", "0", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
