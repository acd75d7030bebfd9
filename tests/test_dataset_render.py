"""`hayai dataset render`: a captioned training dataset rendered by a model from a prompts file, resumable,
never replacing a file it did not write. The tiny SD1 model at 64 px, 1 step."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hayai.dataset import scan_dataset
from hayai.dataset.render import RENDER_SETS, read_prompts, render_dataset
from hayai.errors import RequestError
from hayai.generation.engine import Engine
from hayai.generation.imagefile import read_image_metadata
from hayai.generation.infotext import parse_infotext
from hayai.generation.options import CancelToken
from hayai.lora.catalog import loras_dir
from hayai.lora.synthetic import random_kohya_lora, save_lora
from hayai.models.families import Family
from hayai.models.loading import load_pipeline, source_from_path
from hayai.store import Store

from inprocess import hayai

FAST = ["--steps", "1", "-W", "64", "-H", "64"]
PROMPTS = "# shapes for the tiny model\n\na ((red)) square, <lora:style:0.5> on grey\n   \n# more\n[small:big:0.5] (blue circle:1.3)\n"
CAPTIONS = ["a red square, on grey", "big blue circle"]


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _render(prompts, out, *more, check=True):
    return hayai("dataset", "render", prompts, out, "-q", "--json", *more, check=check)


@pytest.fixture
def style_lora(tiny_folders):
    """The LoRA the first prompt's tag names, for the tiny SD1 model."""
    pipe = load_pipeline(source_from_path(tiny_folders[Family.SD1]))
    return save_lora(random_kohya_lora(pipe, Family.SD1, seed=3), loras_dir() / "style.safetensors")


@pytest.fixture
def rendered(tiny_folders, style_lora, tmp_path):
    """2 prompts x 2 images rendered by the CLI with seed 100: (prompts file, folder, --json result)."""
    prompts, out = tmp_path / "prompts.txt", tmp_path / "its-own"
    prompts.write_text(PROMPTS, encoding="utf-8")
    result = json.loads(_render(prompts, out, "-m", tiny_folders[Family.SD1], "--per-prompt", "2", "--seed", "100", *FAST).stdout)
    return prompts, out, result


def test_render_writes_each_prompts_images_with_plain_captions_and_the_seeds_it_promises(rendered, tiny_folders):
    prompts, out, result = rendered
    assert (result["prompts"], result["per_prompt"], result["images"], result["found"]) == (2, 2, 4, 0)
    names = [f"{n:05d}" for n in range(4)]
    assert result["rendered"] == [str(out / f"{name}.png") for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{n}.png" for n in names), *(f"{n}.txt" for n in names), "render.json"])
    lines = read_prompts(prompts)
    for number, name in enumerate(names):
        prompt_index, k = divmod(number, 2)
        assert (out / f"{name}.txt").read_text(encoding="utf-8") == CAPTIONS[prompt_index] + "\n"
        meta = read_image_metadata(out / f"{name}.png")
        infotext = parse_infotext(meta.infotext)
        assert int(infotext.params["Seed"]) == 100 + prompt_index * 2 + k  # seed + p * per_prompt + k
        assert infotext.prompt == lines[prompt_index]  # the prompt as written (tags and all): the image reproduces
        assert Image.open(out / f"{name}.png").size == (64, 64)
    assert "Lora hashes" in parse_infotext(read_image_metadata(out / "00000.png").infotext).params
    scan = scan_dataset(out)  # what `hayai dataset check` and `hayai train lora|distill` read
    assert [(image.relative, image.caption, image.caption_source) for image in scan.images] == [
        (f"{name}.png", CAPTIONS[number // 2], "txt") for number, name in enumerate(names)]
    assert scan.orphan_captions == () and all(image.readable for image in scan.images)
    runs = Store().runs(kind="generate")  # in the history, each with its image
    assert sorted(run.id for run in runs) == sorted(result["run_ids"]) and len(runs) == 4
    assert sorted(path for run in runs for path in run.outputs) == result["rendered"]


def test_a_deleted_image_is_rendered_again_the_same_and_nothing_else_is(rendered):
    prompts, out, _ = rendered
    before = _pixels(out / "00002.png")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.stem != "00002"}
    (out / "00002.png").unlink()
    (out / "00002.txt").unlink()
    again = json.loads(_render(prompts, out).stdout)  # what it leaves unset is what the folder was rendered with
    assert again["rendered"] == [str(out / "00002.png")] and again["found"] == 3
    np.testing.assert_array_equal(_pixels(out / "00002.png"), before)
    assert (out / "00002.txt").read_text(encoding="utf-8") == CAPTIONS[1] + "\n"
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps  # the others untouched
    (out / "00003.txt").unlink()  # as a kill between an image and its caption leaves it
    last = json.loads(_render(prompts, out).stdout)
    assert (last["rendered"], last["captioned"], last["found"]) == ([], [str(out / "00003.txt")], 4)
    assert (out / "00003.txt").read_text(encoding="utf-8") == CAPTIONS[1] + "\n"
    assert json.loads(_render(prompts, out).stdout)["rendered"] == []


def test_an_interrupted_render_keeps_what_it_finished_and_the_next_call_renders_the_rest(tiny_folders, tmp_path):
    engine, token, out = Engine(device="cpu"), CancelToken(), tmp_path / "out"
    settings = {"model": str(tiny_folders[Family.SD1]), "steps": 1, "width": 64, "height": 64}

    def stop_after_the_first(event):
        if event.phase == "render" and event.done == 1:
            token.interrupt()

    first = render_dataset(engine, ["a red square"], out, per_prompt=3, settings=settings, seed=7,
                           progress=stop_after_the_first, cancel=token)
    assert first.interrupted and first.rendered == [out / "00000.png"]
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00000.txt", "render.json"]  # nothing half-written
    rest = render_dataset(engine, ["a red square"], out, per_prompt=3, settings=settings)
    assert (rest.found, rest.rendered, rest.seed) == (1, [out / "00001.png", out / "00002.png"], 7)


def test_a_file_the_render_did_not_write_is_refused_and_left_as_it_was(rendered, tiny_folders, tmp_path):
    prompts, out, _ = rendered
    prompts.write_text(PROMPTS + "a green triangle\n", encoding="utf-8")  # appending prompts is allowed...
    Image.new("RGB", (64, 64), "white").save(out / "00004.png")  # ...but the first new image's name is taken
    foreign = (out / "00004.png").read_bytes()
    refused = _render(prompts, out, check=False)
    assert refused.returncode == 2
    assert f"{out / '00004.png'} is in the way" in refused.stderr and "move it out" in refused.stderr
    assert (out / "00004.png").read_bytes() == foreign and not (out / "00005.png").exists()  # refused before any work
    assert len(json.loads((out / "render.json").read_text(encoding="utf-8"))["prompts"]) == 2

    (out / "00004.png").unlink()
    (out / "00004.txt").write_text("my own caption\n", encoding="utf-8")
    orphan = _render(prompts, out, check=False)
    assert orphan.returncode == 2 and f"{out / '00004.txt'} has no image beside it" in orphan.stderr
    assert (out / "00004.txt").read_text(encoding="utf-8") == "my own caption\n"

    mine = tmp_path / "my-pictures"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"not rendered here")
    other = _render(prompts, mine, "-m", tiny_folders[Family.SD1], *FAST, check=False)
    assert other.returncode == 2 and "holds files and no render.json" in other.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["cat.jpg"]


def test_continuing_with_other_settings_is_refused_naming_the_setting(rendered, tiny_folders):
    prompts, out, _ = rendered
    files = sorted(p.name for p in out.iterdir())
    for more, expected in [
        (["--steps", "2"], "rendered with steps=1, this call has steps=2: continue with --steps 1"),
        (["--per-prompt", "3"], "rendered with per_prompt=2, this call has per_prompt=3: continue with --per-prompt 2"),
        (["--seed", "5"], "rendered with seed=100, this call has seed=5: continue with --seed 100"),
        (["--cfg", "3"], "rendered with cfg_scale unset, this call has cfg_scale=3.0: continue without --cfg"),
        (["-m", tiny_folders[Family.SDXL]], "rendered with model='tiny-sd1', this call has model='tiny-sdxl': "
                                            f"continue with --model {tiny_folders[Family.SD1]}"),
    ]:
        refused = _render(prompts, out, *more, check=False)
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr
    prompts.write_text(PROMPTS.replace("square", "circle"), encoding="utf-8")
    changed = _render(prompts, out, check=False)
    assert changed.returncode == 2 and "prompt 1 'a ((red)) square, <lora:style:0.5> on grey'" in changed.stderr
    assert sorted(p.name for p in out.iterdir()) == files


def test_the_prompts_file_skips_comments_and_blank_lines_and_an_empty_one_is_an_error(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\ufeff# a comment\n  a cat  \n\n#another\n  # indented comment\na dog # not a comment\n", encoding="utf-8")
    assert read_prompts(path) == ["a cat", "a dog # not a comment"]
    path.write_text("# only comments\n\n   \n", encoding="utf-8")
    empty = hayai("dataset", "render", path, tmp_path / "out", check=False)
    assert empty.returncode == 2 and f"prompts file {path} holds no prompts" in empty.stderr
    assert not (tmp_path / "out").exists()
    path.write_bytes(b"a caf\xe9\n")
    with pytest.raises(RequestError, match=f"prompts file {path} is not UTF-8 text"):
        read_prompts(path)
    with pytest.raises(RequestError, match="cannot be read"):
        read_prompts(tmp_path / "missing.txt")


def test_the_fields_the_render_sets_are_refused_as_settings_and_absent_from_the_cli(tmp_path):
    from hayai.cli.dataset import _SET_BY_RENDER

    assert set(_SET_BY_RENDER) | {"prompt", "seed"} == set(RENDER_SETS)
    with pytest.raises(RequestError, match="output_dir are set by the render"):
        render_dataset(Engine(device="cpu"), ["a cat"], tmp_path / "out", settings={"output_dir": "elsewhere"})
    with pytest.raises(RequestError, match="no words once its tags are taken out"):
        render_dataset(Engine(device="cpu"), ["<lora:style:1>"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
