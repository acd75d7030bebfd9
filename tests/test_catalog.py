"""The model catalog: scanning hayai's folder and UI installs in place, naming models, hashes, defaults."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hayai import paths
from hayai.errors import ModelError, ModelNotFoundError, UnsafeCheckpointError
from hayai.models import catalog as catalog_module
from hayai.models.builtin import BUILTIN_MODEL_NAME
from hayai.models.catalog import PLACEHOLDER_NAME, Catalog, is_placeholder, model_hash
from hayai.models.families import Family
from hayai.store import Store


@pytest.fixture
def store():
    with Store() as opened:
        yield opened


@pytest.fixture
def catalog(store) -> Catalog:
    return Catalog(store)


@pytest.fixture
def models_dir() -> Path:
    folder = paths.models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _copy(tiny_folders, family: Family, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(tiny_folders[family], dest))


def _sd1_state(scale: float = 0.0) -> dict[str, torch.Tensor]:
    """An SD1 checkpoint in the original (A1111) layout, shrunk: only the keys detection looks at."""
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.full((8, 4, 3, 3), scale),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 768),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 768),
    }


def _write_single_file(path: Path, scale: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_sd1_state(scale), str(path))
    return path


def _write_lora(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
        },
        str(path),
    )
    return path


def _by_name(catalog: Catalog) -> dict:
    return {entry.name: entry for entry in catalog.entries()}


def _log_run(store: Store, model: str, status: str = "ok") -> None:
    run_id = store.start_run("generate", request={"prompt": "a cat"}, model=model, model_hash=None, device="cpu")
    store.finish_run(run_id, status=status, seeds=[1], timings={}, peak_memory_bytes=None, outputs=[])


# -- the empty catalog --------------------------------------------------------------------------------


@pytest.fixture
def no_builtin(monkeypatch, tmp_path):
    """A checkout whose demo model is not trained yet."""
    monkeypatch.setattr(catalog_module, "BUILTIN_MODEL", tmp_path / "not-trained-yet")


def test_empty_catalog_resolves_to_the_builtin_demo_model(catalog, monkeypatch, tiny_folders, tmp_path):
    shipped = _copy(tiny_folders, Family.SD1, tmp_path / "builtin" / BUILTIN_MODEL_NAME)
    monkeypatch.setattr(catalog_module, "BUILTIN_MODEL", shipped)
    source = catalog.resolve(None)
    assert (source.name, source.path, source.family, source.kind) == (BUILTIN_MODEL_NAME, shipped, Family.SD1, "folder")
    assert not is_placeholder(source)
    assert catalog.resolve(BUILTIN_MODEL_NAME).path == shipped  # and by name
    assert catalog.entries() == []  # it is not a user's installed model


def test_installed_model_wins_over_the_builtin_one(catalog, models_dir, monkeypatch, tiny_folders, tmp_path):
    monkeypatch.setattr(catalog_module, "BUILTIN_MODEL", _copy(tiny_folders, Family.SD1, tmp_path / "b" / BUILTIN_MODEL_NAME))
    mine = _copy(tiny_folders, Family.SDXL, models_dir / "mine")
    assert catalog.resolve(None).path == mine


def test_empty_catalog_resolves_to_the_placeholder(catalog, no_builtin):
    assert catalog.entries() == []
    source = catalog.resolve(None)
    assert source.name == PLACEHOLDER_NAME
    assert source.kind == "folder" and source.family is Family.SD1
    assert (source.path / "model_index.json").is_file()
    assert source.path.parent == paths.cache_dir()
    assert is_placeholder(source)
    # written once: a second resolve reuses the folder
    stamp = (source.path / "model_index.json").stat().st_mtime_ns
    again = catalog.resolve(None)
    assert again.path == source.path
    assert (again.path / "model_index.json").stat().st_mtime_ns == stamp
    # the placeholder is not an installed model
    assert catalog.entries() == []


def test_placeholder_by_name(catalog):
    assert catalog.resolve(PLACEHOLDER_NAME).name == PLACEHOLDER_NAME


# -- hayai's own folder --------------------------------------------------------------------------------


def test_folders_in_models_dir_are_listed_with_family_and_found_by_name(catalog, models_dir, tiny_folders):
    for family in (Family.SD1, Family.SDXL, Family.SD3):
        _copy(tiny_folders, family, models_dir / f"mine-{family.value}")
    entries = _by_name(catalog)
    assert set(entries) == {"mine-sd1", "mine-sdxl", "mine-sd3"}
    for family in (Family.SD1, Family.SDXL, Family.SD3):
        entry = entries[f"mine-{family.value}"]
        assert entry.family is family
        assert entry.kind == "folder"
        assert entry.problem is None
        assert entry.origin == str(models_dir)
        assert entry.size_bytes == sum(p.stat().st_size for p in entry.path.rglob("*") if p.is_file())
    source = catalog.resolve("mine-sdxl")
    assert source.kind == "folder"
    assert source.family is Family.SDXL
    assert source.path == (models_dir / "mine-sdxl").resolve()
    assert source.name == "mine-sdxl"


def test_files_inside_a_diffusers_folder_are_not_listed_on_their_own(catalog, models_dir, tiny_folders):
    _copy(tiny_folders, Family.SD1, models_dir / "nested" / "mine-sd1")
    assert [e.name for e in catalog.entries()] == ["mine-sd1"]


def test_a_component_folder_is_not_a_model(catalog, models_dir, tiny_folders):
    """A diffusers VAE or tiny autoencoder (config.json, no model_index.json), as previews find in VAE-approx/."""
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    latent_channels=4).save_pretrained(models_dir / "VAE-approx" / "taesd")
    _copy(tiny_folders, Family.SD1, models_dir / "mine-sd1")
    assert [e.name for e in catalog.entries()] == ["mine-sd1"]


def test_only_installed_model_is_the_default(catalog, models_dir, tiny_folders):
    _copy(tiny_folders, Family.SD3, models_dir / "only-sd3")
    source = catalog.resolve(None)
    assert source.name == "only-sd3"
    assert source.family is Family.SD3


# -- UI installs, read in place -----------------------------------------------------------------------


def test_a1111_install_is_scanned_in_place(catalog, models_dir, tiny_folders, tmp_path):
    root = tmp_path / "stable-diffusion-webui"
    model = _copy(tiny_folders, Family.SD1, root / "models" / "Stable-diffusion" / "a1111-sd1")
    _write_lora(root / "models" / "Lora" / "style.safetensors")  # LoRAs are not checkpoints
    message = catalog.add(root)
    assert message.startswith("added: folder")
    assert "models/Stable-diffusion" in message
    entries = _by_name(catalog)
    assert set(entries) == {"a1111-sd1"}
    entry = entries["a1111-sd1"]
    assert entry.family is Family.SD1
    assert entry.path == model.resolve()
    assert entry.origin == str(root.resolve() / "models" / "Stable-diffusion")
    assert list(models_dir.iterdir()) == []  # nothing copied
    assert catalog.resolve("a1111-sd1").path == model.resolve()
    assert catalog.add(root).startswith("already added: folder")


def test_comfyui_install_is_scanned_in_place(catalog, tiny_folders, tmp_path):
    root = tmp_path / "ComfyUI"
    model = _copy(tiny_folders, Family.SD3, root / "models" / "checkpoints" / "sd3" / "comfy-sd3")
    single = _write_single_file(root / "models" / "checkpoints" / "v1-5-pruned.safetensors")
    catalog.add(root)
    entries = _by_name(catalog)
    assert set(entries) == {"comfy-sd3", "v1-5-pruned"}
    assert entries["comfy-sd3"].family is Family.SD3
    assert entries["comfy-sd3"].path == model.resolve()
    assert entries["v1-5-pruned"].family is Family.SD1
    assert entries["v1-5-pruned"].kind == "single_file"
    assert catalog.resolve("v1-5-pruned").path == single.resolve()


def test_plain_folder_is_scanned(catalog, tiny_folders, tmp_path):
    root = tmp_path / "my-models"
    _copy(tiny_folders, Family.SDXL, root / "xl")
    catalog.add(root)
    assert _by_name(catalog)["xl"].family is Family.SDXL


def test_add_a_single_model_file(catalog, tmp_path):
    path = _write_single_file(tmp_path / "elsewhere" / "single.safetensors")
    message = catalog.add(path)
    assert message.startswith("added: model single (sd1)")
    assert str(path.resolve()) in message
    entry = _by_name(catalog)["single"]
    assert entry.origin == "added" and entry.family is Family.SD1


def test_add_a_missing_path_fails(catalog, tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        catalog.add(tmp_path / "nope")


# -- files that are not models --------------------------------------------------------------------------


def test_non_model_file_is_listed_with_a_problem_and_cannot_be_resolved(catalog, models_dir):
    _write_lora(models_dir / "style-lora.safetensors")
    entry = _by_name(catalog)["style-lora"]
    assert entry.family is None
    assert entry.kind == "single_file"
    assert "LoRA/adapter weights, not a model checkpoint" in entry.problem
    assert entry.to_dict()["family"] is None
    with pytest.raises(ModelError, match=r"model 'style-lora' .* cannot be used: this file holds LoRA/adapter weights"):
        catalog.resolve("style-lora")
    # it is never picked as the default either
    assert catalog.resolve(None).name == BUILTIN_MODEL_NAME


def test_adding_a_non_model_file_is_refused(catalog, tmp_path):
    path = _write_lora(tmp_path / "lora.safetensors")
    with pytest.raises(ModelError, match="is not a model hayai can run"):
        catalog.add(path)
    assert catalog.store.catalog_entries() == []


def test_damaged_safetensors_is_listed_with_a_problem(catalog, models_dir):
    (models_dir / "broken.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    entry = _by_name(catalog)["broken"]
    assert entry.family is None
    assert "this file is incomplete or not a safetensors file; download it again" in entry.problem


def test_damaged_diffusers_folder_does_not_break_the_listing(catalog, models_dir, tiny_folders):
    _copy(tiny_folders, Family.SD1, models_dir / "good")
    broken = _copy(tiny_folders, Family.SD1, models_dir / "broken")
    (broken / "model_index.json").write_text('{"_class_name": "StableDiff')
    entries = _by_name(catalog)
    assert entries["good"].family is Family.SD1
    assert entries["broken"].family is None and "model_index.json" in entries["broken"].problem


def test_a_folder_with_a_cut_short_weights_file_never_becomes_the_default(catalog, monkeypatch, tiny_folders, tmp_path):
    """`models add` of a folder holding a truncated model, then plain `generate`: it used to pick that model and fail."""
    shipped = _copy(tiny_folders, Family.SD1, tmp_path / "builtin" / BUILTIN_MODEL_NAME)
    monkeypatch.setattr(catalog_module, "BUILTIN_MODEL", shipped)
    broken = _copy(tiny_folders, Family.SD1, tmp_path / "downloads" / "half-downloaded")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    said = catalog.add(tmp_path / "downloads")
    assert f"cannot be used (never chosen as the default): half-downloaded: {weights}: this file is incomplete" in said
    assert catalog.resolve(None).path == shipped
    with pytest.raises(ModelError, match="incomplete or not a safetensors file; download it again"):
        catalog.resolve("half-downloaded")


# -- pickle checkpoints ------------------------------------------------------------------------------------


@pytest.fixture
def ckpt(models_dir) -> Path:
    path = models_dir / "old-sd1.ckpt"
    torch.save({"state_dict": _sd1_state(), "global_step": 470000}, path)
    return path


def test_pickle_is_listed_but_refused_without_allow_pickle(catalog, ckpt):
    entry = _by_name(catalog)["old-sd1"]
    assert entry.family is None
    assert "--allow-pickle" in entry.problem
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        catalog.resolve(str(ckpt))
    with pytest.raises(ModelError, match="--allow-pickle"):
        catalog.resolve("old-sd1")


def test_pickle_by_name_raises_unsafe_checkpoint_error(catalog, ckpt):
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        catalog.resolve("old-sd1")


def test_pickle_with_allow_pickle_is_detected(catalog, ckpt):
    by_name = catalog.resolve("old-sd1", allow_pickle=True)
    by_path = catalog.resolve(str(ckpt), allow_pickle=True)
    for source in (by_name, by_path):
        assert source.family is Family.SD1
        assert source.kind == "single_file"
        assert source.path == ckpt.resolve()


def test_adding_a_pickle_says_it_needs_allow_pickle(catalog, tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save(_sd1_state(), path)  # a bare state dict, as some trainers write
    message = catalog.add(path)
    assert message.startswith("added: model other")
    assert "--allow-pickle" in message
    assert catalog.resolve("other", allow_pickle=True).family is Family.SD1


# -- remove ------------------------------------------------------------------------------------------------


def test_remove_forgets_an_added_folder_but_keeps_its_files(catalog, tiny_folders, tmp_path):
    root = tmp_path / "a1111"
    model = _copy(tiny_folders, Family.SD1, root / "models" / "Stable-diffusion" / "kept")
    catalog.add(root)
    assert "kept" in _by_name(catalog)
    message = catalog.remove(str(root))
    assert "its files are untouched" in message
    assert catalog.store.catalog_entries() == []
    assert "kept" not in _by_name(catalog)
    assert (model / "model_index.json").is_file()
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_remove_an_added_model_by_name(catalog, tmp_path):
    path = _write_single_file(tmp_path / "outside" / "byname.safetensors")
    catalog.add(path)
    catalog.remove("byname")
    assert "byname" not in _by_name(catalog)
    assert path.is_file()


def test_remove_something_never_added_fails(catalog, models_dir, tiny_folders):
    with pytest.raises(ModelNotFoundError, match=r"nothing added under 'ghost'; added models and folders: none"):
        catalog.remove("ghost")
    scanned = _copy(tiny_folders, Family.SD1, models_dir / "scanned")
    with pytest.raises(ModelNotFoundError, match="was not added with `hayai models add`"):
        catalog.remove(str(scanned))
    assert scanned.is_dir()


# -- names: A1111 title, hash prefix, near misses ------------------------------------------------------------


def test_resolve_by_a1111_title_and_by_hash_prefix(catalog, store, models_dir):
    path = _write_single_file(models_dir / "single-sd1.safetensors")
    digest = model_hash(store, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    for name in (f"single-sd1 [{digest[:10]}]", digest[:10], digest[:8], digest.upper()[:12], digest):
        source = catalog.resolve(name)
        assert source.path == path.resolve(), name
        assert source.family is Family.SD1
        assert source.kind == "single_file"


def test_hash_prefix_that_matches_nothing_is_not_found(catalog, store, models_dir):
    path = _write_single_file(models_dir / "single-sd1.safetensors")
    digest = model_hash(store, path)
    other = "0" * 10 if not digest.startswith("0" * 10) else "f" * 10
    with pytest.raises(ModelNotFoundError):
        catalog.resolve(other)


def test_unknown_name_suggests_a_near_miss(catalog, models_dir, tiny_folders):
    _copy(tiny_folders, Family.SD1, models_dir / "dreamshaper-8")
    with pytest.raises(ModelNotFoundError) as caught:
        catalog.resolve("dreamshaper-9")
    message = str(caught.value)
    assert "model='dreamshaper-9'" in message
    assert "did you mean 'dreamshaper-8'?" in message


def test_unknown_name_with_nothing_installed(catalog):
    with pytest.raises(ModelNotFoundError, match="no models are installed"):
        catalog.resolve("dreamshaper-9")


def test_unknown_name_lists_installed_when_nothing_is_close(catalog, models_dir, tiny_folders):
    _copy(tiny_folders, Family.SD1, models_dir / "dreamshaper-8")
    with pytest.raises(ModelNotFoundError, match="installed: dreamshaper-8"):
        catalog.resolve("zzz")


# -- model_hash -------------------------------------------------------------------------------------------


def _recipe(folder: Path) -> str:
    """The documented folder hash: sha256 of the sorted lines "relative/path sha256" of its weight files."""
    suffixes = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
    lines = sorted(
        f"{p.relative_to(folder).as_posix()} {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in suffixes
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _rewrite(path: Path, tensors: dict) -> None:
    stat = path.stat()
    save_file(tensors, str(path))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a new file version for sure


def test_folder_hash_follows_the_recipe_and_changes_with_a_weight(store, tiny_folders, tmp_path):
    folder = _copy(tiny_folders, Family.SD1, tmp_path / "hashed")
    before = model_hash(store, folder)
    assert before == _recipe(folder)
    assert model_hash(store, folder) == before  # stable (and cached)
    # a config change is not a weight change
    config = folder / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_note": "edited"}))
    assert model_hash(store, folder) == before
    # one weight changes: the hash changes, and still follows the recipe
    from safetensors.torch import load_file

    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1
    _rewrite(weights, tensors)
    after = model_hash(store, folder)
    assert after != before
    assert after == _recipe(folder)


def test_folder_hash_differs_between_models(store, tiny_folders):
    hashes = {model_hash(store, tiny_folders[f]) for f in (Family.SD1, Family.SDXL, Family.SD3)}
    assert len(hashes) == 3


def test_folder_hash_sorts_lines_as_documented(store, tmp_path):
    folder = tmp_path / "order"
    _write_single_file(folder / "a" / "w.safetensors", scale=1.0)
    _write_single_file(folder / "a-b" / "w.safetensors", scale=2.0)
    assert model_hash(store, folder) == _recipe(folder)


# -- the default model ----------------------------------------------------------------------------------------


def test_last_used_model_is_the_default(catalog, store, models_dir, tiny_folders):
    _copy(tiny_folders, Family.SD1, models_dir / "model-a")
    _copy(tiny_folders, Family.SD1, models_dir / "model-b")
    assert catalog.resolve(None).name == "model-a"  # nothing used yet: the first installed
    _log_run(store, "model-b")
    assert catalog.resolve(None).name == "model-b"
    _log_run(store, "model-a", status="error")  # a failed run does not make a model the default
    assert catalog.resolve(None).name == "model-b"
    _log_run(store, "deleted-model")  # a model no longer installed is skipped
    assert catalog.resolve(None).name == "model-b"
    _log_run(store, "model-a")
    assert catalog.resolve(None).name == "model-a"
