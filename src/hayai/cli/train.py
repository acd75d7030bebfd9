"""`hayai train lora CONFIG.yaml [--field value ...] [--resume]`: every TrainConfig field is also an option.

Multi-GPU: `accelerate launch -m hayai train lora CONFIG.yaml` (one process per GPU; add `--cpu
--num_processes 2` to try it on a CPU).
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Optional

import typer

from hayai.cli.app import App, PlainHelp

from hayai.cli.output import console, err_console, silence_library_progress

app = App(help="Train LoRAs.", no_args_is_help=True)

# TrainConfig field type -> the option's type (tuples become repeatable options)
_LISTS = {"target_modules": str, "sample_prompts": str, "sample_seeds": int, "save_formats": str}


@app.callback()
def _group() -> None:
    """Training."""


def _options() -> list[inspect.Parameter]:
    from hayai.training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params = []
    for name, help_text in TrainConfig.help().items():
        flag = "--" + name.replace("_", "-")
        if name in _LISTS:
            annotation, decls = Optional[list[_LISTS[name]]], (flag,)
            help_text += " (repeat the option for several)"
        else:
            kind = next(t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None))
            annotation = Optional[kind]
            decls = (f"{flag}/--no-{name.replace('_', '-')}",) if kind is bool else (flag,)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=typer.Option(None, *decls, help=help_text, show_default=False)))
    return params


def lora(config_file: Optional[Path], resume: bool, as_json: bool, quiet: bool, **fields) -> None:
    """Train a LoRA: CONFIG.yaml and/or options (an option beats the file); Ctrl-C saves a checkpoint, --resume continues."""
    from hayai.training import TrainConfig

    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items() if v is not None and v != []}
    config = TrainConfig.from_yaml(config_file) if config_file else TrainConfig()
    _train(config.replace(**given) if given else config, config_file, resume, as_json, quiet, command="lora")


def distill(config_file: Optional[Path], resume: bool, as_json: bool, quiet: bool, **fields) -> None:
    """Distil a model into a few-step LCM LoRA (4 steps at CFG 1 instead of 20 guided ones) on a folder of images
    like its own (its generations do); `--speed fast` then uses it. Same options as `train lora`."""
    import re

    from hayai.errors import RequestError
    from hayai.training import TrainConfig

    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items() if v is not None and v != []}
    config = TrainConfig.from_yaml(config_file) if config_file else TrainConfig()
    if config.method not in ("lora", "lcm"):
        raise RequestError(f"{config_file}: method={config.method!r}; `hayai train distill` makes method='lcm' LoRAs")
    config = config.replace(**given, method="lcm")
    if "output_name" not in given and (not config_file or config.output_name == TrainConfig().output_name):
        model = Path(config.model).name if config.model else "default"
        config = config.replace(output_name=re.sub(r"[^\w.\-]+", "-", model).strip("-.") + f"-lcm-{config.distill_steps}step")
    _train(config, config_file, resume, as_json, quiet, command="distill")


def _train(config, config_file: Optional[Path], resume: bool, as_json: bool, quiet: bool, *, command: str) -> None:
    from hayai.training import train_lora

    silence_library_progress()
    with _progress(enabled=not (quiet or as_json)) as on_event:
        result = train_lora(config, resume=resume, progress=on_event)
    if result.process != 0:  # under `accelerate launch`, the first process reports for all
        return
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    elif not quiet:
        _summary(result, config_file, command)
    if result.status == "interrupted":
        raise typer.Exit(130)


def _signature(skip: tuple[str, ...] = ()) -> inspect.Signature:
    return inspect.Signature([
        inspect.Parameter("config_file", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],
                          default=typer.Argument(None, metavar="[CONFIG.yaml]", help="A YAML file of TrainConfig fields.")),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--resume", help="Continue from the run folder's latest checkpoint.")),
        inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--json", help="Print the result as JSON on stdout.")),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--quiet", "-q", help="No progress, no summary.")),
        *(p for p in _options() if p.name not in skip),
    ])


lora.__signature__ = _signature()
distill.__signature__ = _signature(skip=("method",))  # always lcm
app.command("lora", cls=PlainHelp)(lora)  # ~50 long option names: rich's table cut them at 80 columns
app.command("distill", cls=PlainHelp)(distill)


class _progress:
    """A rich progress bar with the loss, the validation loss and the ETA; the plan and findings first."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.task = None
        self.loss = self.val = "n/a"

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]} val {task.fields[val]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=err_console)
        self.bar.__enter__()
        return self.on_event

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def on_event(self, event) -> None:
        from rich.markup import escape

        if event.phase in ("prepare", "cache", "save"):
            style = "yellow" if event.message.startswith(("warning:", "error:")) else "dim"
            self.bar.console.print(f"[{style}]{escape(event.message)}[/]")
            return
        if event.val_loss is not None:
            self.val = f"{event.val_loss:.4f}"
        if event.loss is not None:
            self.loss = f"{event.loss:.4f}"
        if self.task is None:
            self.task = self.bar.add_task("training", total=event.total, completed=event.step, loss=self.loss, val=self.val)
        self.bar.update(self.task, completed=event.step, loss=self.loss, val=self.val)
        if event.phase in ("checkpoint", "sample"):
            self.bar.console.print(f"[dim]step {event.step}: {event.phase} {escape(event.message)}[/]")


def validation_note(config: dict) -> str:
    """Why the validation loss sits at another level than the training loss (what the two really measure)."""
    from hayai.training.objective import VALIDATION_TIMESTEPS

    if config.get("method") == "lcm":
        return (f"  the validation loss is the consistency distance on the held-out images, with fixed noise at "
                f"{VALIDATION_TIMESTEPS} points of the 50-step schedule: how far the LoRA's one-step estimate is from its "
                "own estimate after the model's guided step. It falls as the LoRA learns; the sample grids (the LoRA's "
                "few steps) show what it draws")
    gamma = config.get("min_snr_gamma")
    weighted = f", weighted by min-SNR (gamma {gamma:g}: the low-noise steps count less)" if gamma else ""
    return (f"  the validation loss is the plain squared error on the held-out images, with fixed noise at "
            f"{VALIDATION_TIMESTEPS} timesteps spread over the schedule; the training loss is a running figure on the "
            f"training images at random timesteps{weighted}. Their levels differ: watch each one's trend (a rising "
            "validation loss means overfitting)")


def _summary(result, config_file: Optional[Path], command: str = "lora") -> None:
    from rich.markup import escape

    plan = result.plan
    precision = {"no": "float32", "fp16": "fp16 mixed precision", "bf16": "bf16 mixed precision"}[plan["mixed_precision"]]
    console.print(escape(f"trained with {precision}, batch {plan['batch_size']}, gradient checkpointing "
                         f"{'on' if plan['gradient_checkpointing'] else 'off'}, {plan['optimizer']}, on {plan['device']}"))
    if result.validation:
        (first_step, first), (last_step, last) = result.validation[0], result.validation[-1]
        console.print(f"validation loss: {first:.4f} (step {first_step}) -> {last:.4f} (step {last_step})")
        console.print(escape(validation_note(result.config)), style="dim")
    for name, path in result.files.items():
        console.print(escape(f"{name:>10}: {path}"))
    if result.status == "interrupted":
        again = (f"hayai train {command} {config_file} --resume" if config_file
                 else f"hayai train {command} --output-name {result.config['output_name']} --resume")
        console.print(escape(f"interrupted at step {result.step} of {result.total_steps}; the checkpoint is saved. Continue with: {again}"))
    else:
        name = result.config["output_name"]
        if result.config.get("method") == "lcm":
            steps = result.config["distill_steps"]
            console.print(escape(f"few-step LoRA {result.lora_path} ({result.step} steps): generate with --speed fast, or "
                                 f"--lora {name} (it sets {steps} steps, the LCM sampler and CFG 1)"))
        else:
            console.print(escape(f"LoRA {result.lora_path} ({result.step} steps); use it with <lora:{name}:0.8> or --lora {name}:0.8"))
