"""The controls the Generate and img2img/inpaint pages share (model, sampler, steps, CFG, size, seed,
batch), the prompt's token counts, the LoRA picker and the plan table; each from the library."""

from __future__ import annotations

import html
import random

import gradio as gr

from hayai.generation.request import MAX_SEED
from hayai.server.ui.fields import control

__all__ = ["model_choices", "lora_choices", "prompt_report", "plan_markdown", "Settings"]

_TOKENIZERS: dict = {}


def model_choices(state) -> list[str]:
    from hayai.server.catalogs import sd_models

    return [row["title"] for row in sd_models(state.catalog)]


def default_model(state) -> str | None:
    from hayai.server.catalogs import title_of

    try:
        return title_of(state.catalog, state.options.get("sd_model_checkpoint"))
    except Exception:  # no default model: the dropdown starts empty and the engine names what is missing
        return None


def model_defaults(state, model: str | None) -> dict:
    """Steps, CFG and size a request with those fields blank would run with on `model` (its card's, else the
    family's), resolved as the /plan route resolves them; {} when the model cannot be read."""
    from hayai.generation.request import GenerationRequest
    from hayai.memory.facts import facts_for_source
    from hayai.models.card import recommended_settings

    try:
        source = state.catalog.resolve(model.rsplit(" [", 1)[0] if model and model.endswith("]") else model)
        side = facts_for_source(source)[0].native_size
        resolved = GenerationRequest(prompt="").resolve(source.family, (side, side),
                                                        recommended=recommended_settings(source))
    except Exception:  # the form keeps blank fields; the job's own check names the problem
        return {}
    return {"steps": resolved.steps, "cfg_scale": resolved.cfg_scale, "width": resolved.width, "height": resolved.height}


def lora_choices(state) -> list[str]:
    from hayai.server.catalogs import loras

    return [row["name"] for row in loras(state.store)]


def lora_info(state, name: str | None) -> str:
    from hayai.server.catalogs import loras

    for row in loras(state.store):
        if row["name"] == name:
            from hayai.lora.inspect import family_from_metadata, trigger_words

            meta = row["metadata"]
            family = family_from_metadata(meta)
            base = family.value if family else (meta.get("ss_base_model_version") or meta.get("ss_sd_model_name") or "?")
            words = trigger_words(meta, limit=6)  # what `hayai lora info` shows: folder classes, frequent tags
            return f"**{html.escape(name)}** · base: {html.escape(str(base))}" + (
                f" · trigger words: {html.escape(', '.join(words))}" if words else "")
    return ""


def prompt_report(state, model: str | None, prompt: str, negative: str, steps) -> str:
    """Token counts per encoder, 75-token chunks and the warnings of `hayai prompt check`, as Markdown."""
    from hayai.prompts import check_prompt, load_tokenizers

    try:
        source = state.catalog.resolve(model.rsplit(" [", 1)[0] if model else None)
        key = (source.name, str(source.path))
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = load_tokenizers(source)
        report = check_prompt(prompt or "", negative or "", tokenizers=_TOKENIZERS[key], family=source.family,
                              steps=int(steps or 20))
    except Exception as error:  # shown, not raised: the prompt box must keep working while the model is unreadable
        return f"prompt check unavailable: {html.escape(str(error))}"
    parts = []
    for label, text in (("prompt", report.prompt), ("negative", report.negative)):
        counts = ", ".join(f"{e.encoder} {e.tokens} tokens ({max(1, len(e.chunks))} chunk{'s' if len(e.chunks) > 1 else ''})"
                           for e in text.encoders)
        parts.append(f"**{label}**: {counts or 'no tokens'}")
    lines = [" · ".join(parts)]
    lines += [f'<span class="hayai-warn">⚠ {html.escape(w)}</span>' for w in report.warnings]
    return "<br>".join(lines)


def plan_markdown(plan: dict) -> str:
    """The `hayai plan` table: every strategy's predicted time and peak memory, the choice and why."""
    rows = ["| strategy | fits | predicted time | peak memory | note |", "|---|---|---|---|---|"]
    for candidate in plan["candidates"]:
        name = candidate["strategy"]["name"]
        mark = " **(chosen)**" if name == plan["chosen"] else ""
        rows.append(f"| {name}{mark} | {'yes' if candidate['fits'] else 'no'} | {candidate['seconds']:.2f} s | "
                    f"{candidate['peak_bytes'] / 2**20:,.0f} MiB | {candidate.get('note') or ''} |")
    head = f"**{plan['model']}** on {plan['device']}: **{plan['chosen']}** — {plan['reason']}"
    warnings = "".join(f"\n\n⚠ {w}" for w in plan.get("warnings", []))
    return head + warnings + "\n\n" + "\n".join(rows)


class Settings:
    """The shared controls, made inside the caller's layout; `components` maps field name -> control."""

    def __init__(self, state, prefix: str) -> None:
        self.state = state
        with gr.Row():
            self.model = control("model", choices=model_choices(state), value=default_model(state), allow_custom_value=False,
                                 elem_id=f"{prefix}model", label="Model", scale=3)
            refresh = gr.Button("↻", scale=0, min_width=40, elem_id=f"{prefix}refresh_models")
        refresh.click(lambda: gr.Dropdown(choices=model_choices(state)), outputs=self.model)
        from hayai.generation.samplers import SAMPLERS, SCHEDULE_TYPES

        defaults = model_defaults(state, self.model.value)

        with gr.Row():
            self.sampler = control("sampler", choices=[("the model's default", ""), *[(n, n) for n in SAMPLERS]], value="",
                                   elem_id=f"{prefix}sampler")
            self.schedule = control("schedule_type", choices=list(SCHEDULE_TYPES), elem_id=f"{prefix}schedule_type")
        with gr.Row():
            self.steps = control("steps", elem_id=f"{prefix}steps", value=defaults.get("steps"))
            self.cfg = control("cfg_scale", elem_id=f"{prefix}cfg_scale", value=defaults.get("cfg_scale"))
        with gr.Row():
            self.width = control("width", elem_id=f"{prefix}width", step=8, value=defaults.get("width"))
            self.height = control("height", elem_id=f"{prefix}height", step=8, value=defaults.get("height"))
        with gr.Row():
            self.seed = control("seed", value=-1, elem_id=f"{prefix}seed", scale=3)
            self.random = gr.Button("🎲 random", scale=0, min_width=90, elem_id=f"{prefix}seed_random")
            self.reuse = gr.Button("♻ last", scale=0, min_width=80, elem_id=f"{prefix}seed_reuse")
        with gr.Row():
            self.batch_size = control("batch_size", elem_id=f"{prefix}batch_size")
            self.batch_count = control("batch_count", elem_id=f"{prefix}batch_count")
        self.model.change(lambda model: _defaults_update(state, model), inputs=self.model,
                          outputs=[self.steps, self.cfg, self.width, self.height])
        self.last_seed = gr.State(None)
        self.random.click(lambda: -1, outputs=self.seed)
        self.reuse.click(lambda last: last if last is not None else -1, inputs=self.last_seed, outputs=self.seed)
        # field name -> control; the names are GenerationRequest's (the elem_ids carry the page's prefix)
        self.components = {"model": self.model, "sampler": self.sampler, "schedule_type": self.schedule,
                           "steps": self.steps, "cfg_scale": self.cfg, "width": self.width, "height": self.height,
                           "seed": self.seed, "batch_size": self.batch_size, "batch_count": self.batch_count}


def _defaults_update(state, model):
    defaults = model_defaults(state, model)
    return [defaults.get(name, gr.update()) for name in ("steps", "cfg_scale", "width", "height")]


def fields_from(components: dict, values: dict) -> dict:
    """Request fields from {field name: control} and Gradio's {control: value}; blanks mean the default."""
    from hayai.generation.fields import FIELD

    fields = {}
    for name, component in components.items():
        value = values.get(component)
        if value is None or value == "" or value == []:
            continue
        if FIELD[name].type == "int":
            value = int(value)
        if name == "model":
            value = value.rsplit(" [", 1)[0] if value.endswith("]") else value
        fields[name] = value
    return fields


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)
