"""Off a terminal (a log, a pipe) a run still says what it does: a line per tenth of each phase, and before a
long run its predicted time (a warning past half an hour), where it used to run 27 minutes in silence."""

from __future__ import annotations

from hayai.cli.output import err_console, progress_printer
from hayai.generation.engine import Engine
from hayai.generation.request import GenerationRequest
from hayai.generation.results import ProgressEvent
from inprocess import hayai


def test_a_run_off_a_terminal_prints_a_line_per_tenth_of_the_steps():
    err = hayai("generate", "a red circle", "--steps", "20", "--seed", "1").stderr.splitlines()
    denoising = [line for line in err if line.startswith("denoising ")]
    assert [line.split()[1] for line in denoising] == [f"{n}/20" for n in range(2, 21, 2)]
    assert err[0].startswith("loading hayai-shapes 0/1") and "predicted time" not in "\n".join(err)  # a short run


def test_the_engine_announces_its_plan_before_the_first_step(tmp_path):
    events = []
    Engine(device="cpu").generate(GenerationRequest(prompt="x", steps=2, output_dir=str(tmp_path)), progress=events.append)
    phases = [e.phase for e in events]
    plan = events[phases.index("plan")]
    assert phases.index("plan") < phases.index("denoise") and plan.seconds > 0 and plan.detail == "cpu-float32"


def test_a_long_prediction_is_printed_and_a_very_long_one_warned(capsys):
    assert not err_console.is_terminal  # pytest captures stderr
    with progress_printer() as on_event:
        on_event(ProgressEvent("plan", 0, 1, "cpu-float32", seconds=30.0))
        on_event(ProgressEvent("plan", 0, 1, "cpu-float32", seconds=600.0))
        on_event(ProgressEvent("plan", 0, 1, "cpu-float32", seconds=407_000.0))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "predicted time: ~10 min with cpu-float32 (the plan's estimate; Ctrl-C stops it)"
    assert lines[1].startswith("warning: predicted time: ~113.1 h with cpu-float32") and len(lines) == 2


def test_a_sweep_off_a_terminal_prints_a_line_per_cell(tmp_path):
    err = hayai("sweep", "a red circle", "--x", "steps=1,2", "-o", tmp_path).stderr.splitlines()
    assert [line.split(" done")[0] for line in err if line.startswith("cell ")] == ["cell 1/2", "cell 2/2"]
