"""`hayai`: the command line. A thin layer: parse, call the library, print.

Errors the user can fix print one line (`error: ...`) and exit with 2 for bad input, 1 otherwise.
"""

from __future__ import annotations

import os
import sys


from hayai.cli.app import App

from hayai.cli import eval as eval_cli
from hayai.cli import bench, dataset, generate, history, lora, models, plan, prompt, serve, sweep, train

app = App(
    name="hayai",
    help="Fast local image generation with diffusion models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("generate")(generate.generate)
app.command("img2img")(generate.img2img)
app.command("inpaint")(generate.inpaint)
app.command("info")(generate.info)
app.command("history")(history.history)
app.command("doctor")(plan.doctor)
app.command("plan")(plan.plan)
app.add_typer(bench.app, name="bench")
app.add_typer(models.app, name="models")
app.add_typer(lora.app, name="lora")
app.add_typer(prompt.app, name="prompt")
app.add_typer(dataset.app, name="dataset")
app.add_typer(train.app, name="train")
app.command("sweep")(sweep.sweep)
app.command("explore")(sweep.explore)
app.command("refine")(sweep.refine)
app.add_typer(eval_cli.app, name="eval")
app.command("serve")(serve.serve)


def _quiet_libraries() -> None:
    """diffusers and transformers log deprecations and optional-dependency notes a user cannot act on."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> None:
    """Run `hayai` with `argv` (default: the process's arguments); always ends in SystemExit."""
    from hayai.errors import HayaiError, disk_full

    _quiet_libraries()
    try:
        app(args=argv)
    except HayaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a full disk while writing anything (a LoRA, a checkpoint) is one line too
        full = disk_full(exc)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        sys.exit(full.exit_code)
    except KeyboardInterrupt:
        print("interrupted: finished images were kept, nothing half-written was left", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
