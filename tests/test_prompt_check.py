"""`hayai prompt check`: token counts, chunks, cuts, weights, LoRA tags and warnings (tiny tokenizers:
one token per character)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hayai.models.families import Family
from hayai.models.loading import source_from_path
from hayai.models.tiny import build_tiny_pipeline
from hayai.prompts import check_prompt, load_tokenizers, pipeline_tokenizers


def test_report_counts_chunks_weights_and_warns():
    tokenizers = pipeline_tokenizers(build_tiny_pipeline(Family.SD1))
    prompt = "(masterpiece:2.5), beautiful cat, " + "b" * 100 + " <lora:style:0.7>"
    report = check_prompt(prompt, "", tokenizers=tokenizers, family=Family.SD1)
    side = report.prompt
    assert [(t.name, t.te_weight) for t in side.loras] == [("style", 0.7)]
    assert side.weighted == [("masterpiece", 2.5)]
    (clip,) = side.encoders
    # masterpiece , beautiful cat , = 11 + 1 + 9 + 3 + 1 tokens, then 100
    assert clip.encoder == "CLIP-L" and clip.tokens == 125 and len(clip.chunks) == 2
    assert clip.diffusers_cut.replace(" ", "") == "b" * 50  # what plain diffusers would have dropped
    joined = "\n".join(report.warnings)
    for expected in ("outside 0..2", "filler words (beautiful)", "negative prompt is empty", "make 2 chunks"):
        assert expected in joined
    assert report.to_dict()["prompt"]["loras"] == [{"name": "style", "te_weight": 0.7, "unet_weight": 0.7}]


def test_report_shows_prompt_editing_and_quiet_prompts_have_no_warnings():
    tokenizers = pipeline_tokenizers(build_tiny_pipeline(Family.SDXL))
    report = check_prompt("a [cat:dog:0.5] BREAK garden", "blurry", tokenizers=tokenizers, family=Family.SDXL, steps=10)
    assert report.prompt.schedule == [(5, "a cat BREAK garden"), (10, "a dog BREAK garden")]
    assert [e.encoder for e in report.prompt.encoders] == ["CLIP-L", "OpenCLIP-bigG"]
    assert [len(e.chunks) for e in report.prompt.encoders] == [2, 2] and report.prompt.breaks == 1
    assert report.warnings == []


def test_sd3_reports_what_t5_cuts(tiny_folders):
    source = source_from_path(tiny_folders[Family.SD3])
    tokenizers = load_tokenizers(source)
    assert set(tokenizers) == {"tokenizer", "tokenizer_2", "tokenizer_3"}
    report = check_prompt("x" * 600, "blurry", tokenizers=tokenizers, family=Family.SD3)
    t5 = report.prompt.encoders[-1]
    assert t5.encoder == "T5" and t5.tokens > 512 and t5.cut
    assert any("T5 reads 512 tokens" in w for w in report.warnings)


def test_prompt_check_cli(tiny_folders):
    from hayai.cli.prompt import app

    result = CliRunner().invoke(
        app, ["check", "(a red cat:1.2), [sitting|standing] <lora:x:0.5>", "-n", "blurry", "-m", str(tiny_folders[Family.SD1]), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["family"] == "sd1"
    assert data["prompt"]["weighted"] == [{"text": "a red cat", "weight": 1.2}]
    assert len(data["prompt"]["schedule"]) == 20  # alternation changes the text every step
    assert data["prompt"]["loras"][0]["name"] == "x"
    text = CliRunner().invoke(app, ["check", "[x|y] (a:3)", "-m", str(tiny_folders[Family.SD1])])
    assert text.exit_code == 0 and "[x|y]" in text.output and "outside 0..2" in text.output
