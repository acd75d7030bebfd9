"""Nothing escapes: a crafted image, prompt or infotext gives a one-line error or a normal run, within a second."""

from __future__ import annotations

import json
import time

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from hayai.cli.main import app
from hayai.errors import HayaiError, RequestError
from hayai.generation.engine import Engine
from hayai.generation.imagefile import read_image_metadata, save_image
from hayai.generation.infotext import parse_infotext
from hayai.generation.request import GenerationRequest
from hayai.paths import outputs_dir
from hayai.prompts.parser import MAX_NESTING, parse_prompt


def hayai(*args):
    """`hayai ARGS` in this process; a HayaiError comes back as `result.exception`, as main() would print it."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """An image made by hayai (the built-in model, 2 steps) and its metadata."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HAYAI_HOME", str(tmp_path_factory.mktemp("made")))
        path = Engine().generate(GenerationRequest("a red circle", steps=2, seed=42)).images[0].path
    return path, read_image_metadata(path)


def _crafted(made, tmp_path, edit) -> str:
    path, meta = made
    record = json.loads(json.dumps(meta.hayai))
    edit(record)
    return str(save_image(Image.open(path), tmp_path / "crafted.png", infotext=meta.infotext, hayai_meta=record))


def test_from_never_writes_where_the_image_says(made, tmp_path):
    escape = tmp_path / "escape"

    def edit(record):
        record["request"].update(output_dir=str(escape), filename_pattern="{index:0200000000d}")

    result = hayai("generate", "--from", _crafted(made, tmp_path, edit), "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)["images"][0]["path"]
    assert written == str(outputs_dir() / "00000-42.png")  # the normal folder and pattern
    assert not escape.exists()


def test_from_still_takes_the_users_own_output_options(made, tmp_path):
    crafted = _crafted(made, tmp_path, lambda record: record["request"].update(output_dir=str(tmp_path / "escape")))
    result = hayai("generate", "--from", crafted, "-o", tmp_path / "mine", "--pattern", "again-{seed}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["images"][0]["path"] == str(tmp_path / "mine" / "again-42.png")


@pytest.mark.parametrize("pattern", ["{index:0200000000d}", "{cfg:.99999999f}-{seed}", "{index:{seed}}", "x" * 300 + "{seed}",
                                     "{prompt:>500}-{seed}"])
def test_huge_filename_patterns_are_refused_at_once(pattern):
    started = time.perf_counter()
    with pytest.raises(RequestError, match="filename_pattern="):
        GenerationRequest("a cat", filename_pattern=pattern)
    assert time.perf_counter() - started < 1


def test_ordinary_patterns_still_work():
    for pattern in ("{index:05d}-{seed}", "{date}-{time}-{prompt}-{model}-{sampler}-{seed}", "{cfg:.2f}-{steps}-{index:03d}"):
        assert GenerationRequest("a cat", filename_pattern=pattern).filename_pattern == pattern


@pytest.mark.parametrize(("part", "key"), [("image", None), ("request", "seed"), ("image", "batch_index"), ("model", None)])
def test_a_hayai_record_missing_a_key_is_a_one_line_error(made, tmp_path, part, key):
    def edit(record):
        if key is None:
            del record[part]
        else:
            del record[part][key]

    result = hayai("generate", "--from", _crafted(made, tmp_path, edit))
    assert isinstance(result.exception, HayaiError), result.exception
    named = part if key is None else f"{part}.{key}"
    assert named in str(result.exception) and "crafted.png" in str(result.exception)
    assert not outputs_dir().exists()


def test_500_nested_parentheses_are_a_request_error():
    with pytest.raises(RequestError, match="nests brackets 500 deep"):
        GenerationRequest("(" * 500 + "cat" + ")" * 500)
    deep = parse_prompt("(" * MAX_NESTING + "cat" + ")" * MAX_NESTING + r" \(" * 500)  # escaped ones do not count
    assert deep.fragments()[0].weight == pytest.approx(1.1**MAX_NESTING)
    result = hayai("generate", "[" * 500 + "cat")
    assert isinstance(result.exception, RequestError) and result.exit_code != 0


def _a1111_png(path, infotext: str):
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", infotext)
    Image.new("RGB", (64, 64)).save(path, pnginfo=pnginfo)
    return path


CRAFTED_LINES = ["a" * 100_000, "Steps: 20, Seed: 1, Size: 64x64, " + "x y-z/" * 17_000, 'k: "' + '\\",' * 33_000,
                 ("ab:" + '"\\",' * 3) * 7_000]


@pytest.mark.parametrize("line", CRAFTED_LINES, ids=["word", "key-run", "escapes", "quotes"])
def test_a_100_kb_crafted_last_line_parses_in_under_a_second(tmp_path, line):
    png = _a1111_png(tmp_path / "crafted.png", "a cat\n" + line)
    started = time.perf_counter()
    request, _, _ = Engine().request_from_image(png)  # what --from and refine read
    parsed = parse_infotext(read_image_metadata(png).infotext)
    assert time.perf_counter() - started < 1
    assert request.prompt.startswith("a cat") and parsed.prompt.startswith("a cat")


def test_the_linear_parser_finds_what_a1111s_regex_finds():
    """Random short lines over the characters that matter: the same pairs as A1111's findall."""
    import random

    from hayai.generation.infotext import _PARAM_RE, _find_params

    pieces = ["a", "1", "_", " ", "-", "/", ":", ",", '"', "\\", "\t", "é", "\u3000", "Key: ", ', ', '"a', '\\"', "x:"]
    rng = random.Random(14)
    for _ in range(20_000):
        line = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        assert _find_params(line) == _PARAM_RE.findall(line), line


def test_info_strips_terminal_control_characters(tmp_path):
    hostile = "a \x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m cat\r\x9b1A\x7f\tnext\nSteps: 2, Seed: 1, Size: 64x64"
    result = hayai("info", _a1111_png(tmp_path / "hostile.png", hostile))
    assert result.exit_code == 0, result.output
    assert result.stdout == "a ]0;owned[2J[31mred[0m cat1A\tnext\nSteps: 2, Seed: 1, Size: 64x64\n"
