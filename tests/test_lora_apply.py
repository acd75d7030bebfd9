"""LoRAs applied by weight patching, against diffusers' and PEFT's own loaders on tiny pipelines.

Reference for "the same image": diffusers `load_lora_weights` + `set_adapters` + `fuse_lora` (and PEFT's
`merge` for PEFT files). Patching computes PEFT's update formula in the same order, so images and
weights match bit for bit. diffusers' unfused adapters compute `W x + s B(A x)` instead of `(W + s BA) x`,
which differs by float rounding only: checked to 1e-4 on [0, 1] pixels.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from hayai.lora import LoraError, LoraSet, LoraSpec, read_lora_file
from hayai.lora.convert import ModuleIndex, kohya_to_diffusers
from hayai.lora.formats import split_layers
from hayai.lora.synthetic import random_kohya_lora, save_lora, to_peft
from hayai.models.families import Family
from hayai.models.tiny import build_tiny_pipeline



def _image(pipe, prompt="a red cat"):
    return pipe(
        prompt, negative_prompt="blurry", num_inference_steps=2, guidance_scale=5.0, width=64, height=64,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images


def _by_path(files):
    return lambda name: files[name]


def _kohya(tmp_path, family, name="k", **kwargs):
    state = random_kohya_lora(build_tiny_pipeline(family), family, **kwargs)
    return save_lora(state, tmp_path / f"{name}.safetensors")


def _diffusers_copy(tmp_path, family, kohya_path, name="d"):
    """The kohya file in diffusers naming (alphas in the lora_adapter_metadata header entry)."""
    layers, _ = split_layers(read_lora_file(kohya_path))
    tensors, metadata = kohya_to_diffusers(layers, ModuleIndex(build_tiny_pipeline(family), family))
    return save_lora(tensors, tmp_path / f"{name}.safetensors", metadata)


def _diffusers_fused(family, path, weights=(0.8,), paths=None):
    pipe = build_tiny_pipeline(family)
    paths = paths or [path]
    names = [f"a{i}" for i in range(len(paths))]
    for name, p in zip(names, paths):
        pipe.load_lora_weights(str(p), adapter_name=name)
    pipe.set_adapters(names, list(weights))
    unfused = _image(pipe)
    pipe.fuse_lora(adapter_names=names)
    return pipe, unfused


def _assert_same_weights(ours, reference, components):
    for component in components:
        mine = getattr(ours, component).state_dict()
        theirs = {k.replace(".base_layer", ""): v for k, v in getattr(reference, component).state_dict().items() if ".lora_" not in k}
        assert mine.keys() == theirs.keys()
        different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
        assert different == [], f"{component}: {different[:5]}"


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL], ids=lambda f: f.value)
def test_kohya_lora_equals_diffusers_load_lora_weights(tmp_path, family):
    path = _kohya(tmp_path, family, rank=4, alpha=2.0)
    base = _image(build_tiny_pipeline(family))
    ours = build_tiny_pipeline(family)
    applied = LoraSet(ours, family, _by_path({"style": path})).apply([LoraSpec("style", 0.8)])
    reference, unfused = _diffusers_fused(family, path)
    assert applied[0].format == "kohya" and applied[0].layers == applied[0].modules > 0
    image = _image(ours)
    assert not np.allclose(image, base, atol=1e-2)  # the LoRA does something
    assert np.array_equal(image, _image(reference))
    _assert_same_weights(ours, reference, ["unet", "text_encoder"] + (["text_encoder_2"] if family is Family.SDXL else []))
    assert np.abs(image - unfused).max() < 1e-4


@pytest.mark.parametrize("family", [Family.SD1, Family.SDXL, Family.SD3], ids=lambda f: f.value)
def test_diffusers_format_equals_diffusers_load_lora_weights(tmp_path, family):
    components = None if family is not Family.SD3 else ("transformer", "text_encoder", "text_encoder_2")  # diffusers: no T5 LoRAs
    path = _diffusers_copy(tmp_path, family, _kohya(tmp_path, family, rank=4, alpha=3.0, components=components))
    ours = build_tiny_pipeline(family)
    applied = LoraSet(ours, family, _by_path({"d": path})).apply([LoraSpec("d", 0.8)])
    reference, _ = _diffusers_fused(family, path)
    assert applied[0].format == "diffusers"
    assert np.array_equal(_image(ours), _image(reference))


@pytest.mark.parametrize("family, component", [(Family.SD1, "unet"), (Family.SDXL, "text_encoder_2")], ids=["sd1-unet", "sdxl-te2"])
def test_peft_format_equals_peft_merge(tmp_path, family, component):
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    diffusers_path = _diffusers_copy(tmp_path, family, _kohya(tmp_path, family, rank=4, alpha=2.0))
    lora = read_lora_file(diffusers_path)
    tensors, config = to_peft(lora.tensors, component, lora.metadata)
    folder = tmp_path / "peft"
    path = save_lora(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps(config))

    ours = build_tiny_pipeline(family)
    applied = LoraSet(ours, family, _by_path({"p": path})).apply([LoraSpec("p", 0.7)])
    reference = build_tiny_pipeline(family)
    module = getattr(reference, component)
    inject_adapter_in_model(LoraConfig(**{k: v for k, v in config.items() if k != "peft_type"}), module, adapter_name="p")
    result = set_peft_model_state_dict(module, {k[len("base_model.model.") :]: v for k, v in tensors.items()}, adapter_name="p")
    assert not result.unexpected_keys
    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.set_scale("p", 0.7)
            layer.merge(adapter_names=["p"])
    assert applied[0].format == "peft" and applied[0].layers == len(tensors) // 2
    assert np.array_equal(_image(ours), _image(reference))


def test_kohya_sd3_with_fused_qkv_takes_effect(tmp_path):
    family = Family.SD3
    path = _kohya(tmp_path, family, rank=4, alpha=4.0, components=("transformer", "text_encoder", "text_encoder_2"))
    keys = read_lora_file(path).tensors.keys()
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight" in keys
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    base = _image(build_tiny_pipeline(family))

    # diffusers has no kohya SD3 converter: it loads the file and nothing changes
    silent = build_tiny_pipeline(family)
    silent.load_lora_weights(str(path), adapter_name="k")
    assert np.array_equal(_image(silent), base)

    ours = build_tiny_pipeline(family)
    applied = LoraSet(ours, family, _by_path({"k": path})).apply([LoraSpec("k", 0.8)])
    assert applied[0].modules > applied[0].layers  # each fused qkv layer updates three diffusers layers
    image = _image(ours)
    assert not np.allclose(image, base, atol=1e-2)
    # the same update split into q/k/v, loaded by diffusers itself
    reference, _ = _diffusers_fused(family, _diffusers_copy(tmp_path, family, path))
    assert np.array_equal(image, _image(reference))
    _assert_same_weights(ours, reference, ["transformer", "text_encoder", "text_encoder_2"])


def test_kohya_sd3_names_follow_sai_checkpoints(tmp_path, tiny_folders):
    """Independent of our name table: patch the SAI single-file weights, let diffusers convert them."""
    from diffusers import StableDiffusion3Pipeline
    from safetensors.torch import save_file

    from hayai.models.single_file import single_file_state_dict

    sai = single_file_state_dict(build_tiny_pipeline(Family.SD3))
    prefix, generator, lora = "model.diffusion_model.", torch.Generator().manual_seed(3), {}
    for key, weight in list(sai.items()):
        name = key[len(prefix) : -len(".weight")] if key.startswith(prefix) and key.endswith(".weight") else ""
        if weight.ndim != 2 or not name.startswith(("joint_blocks", "final_layer", "context_embedder")) or ".ln_" in name:
            continue
        down = torch.randn(2, weight.shape[1], generator=generator) / weight.shape[1] ** 0.5
        up = torch.randn(weight.shape[0], 2, generator=generator) * 0.3
        kohya = "lora_unet_" + name.replace(".", "_")
        lora.update({f"{kohya}.lora_down.weight": down, f"{kohya}.lora_up.weight": up, f"{kohya}.alpha": torch.tensor(1.0)})
        sai[key] = weight + (up @ down) * 0.5
    assert "lora_unet_final_layer_adaLN_modulation_1.alpha" in lora  # a (shift, scale) layer SAI orders differently
    patched = tmp_path / "patched.safetensors"
    save_file({k: v.contiguous().clone() for k, v in sai.items()}, str(patched))
    reference = StableDiffusion3Pipeline.from_single_file(str(patched), config=str(tiny_folders[Family.SD3]), local_files_only=True)

    ours = build_tiny_pipeline(Family.SD3)
    path = save_lora(lora, tmp_path / "sai.safetensors")
    LoraSet(ours, Family.SD3, _by_path({"x": path})).apply([LoraSpec("x")])
    _assert_same_weights(ours, reference, ["transformer"])


def test_weight_zero_equals_no_lora(tmp_path):
    family = Family.SD1
    path = _kohya(tmp_path, family)
    base = build_tiny_pipeline(family)
    pipe = build_tiny_pipeline(family)
    loras = LoraSet(pipe, family, _by_path({"k": path}))
    loras.apply([LoraSpec("k", 0.0)])
    assert np.array_equal(_image(pipe), _image(base))
    _assert_same_weights(pipe, base, ["unet", "text_encoder"])
    loras.apply([LoraSpec("k", 1.0, te_weight=0.0)])  # the U-Net part only
    _assert_same_weights(pipe, base, ["text_encoder"])
    assert not torch.equal(pipe.unet.down_blocks[0].attentions[0].proj_in.weight, base.unet.down_blocks[0].attentions[0].proj_in.weight)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")  # diffusers, two adapters
def test_two_loras_add_their_weighted_deltas(tmp_path):
    family = Family.SDXL
    first = _kohya(tmp_path, family, name="first", seed=1, rank=4, alpha=2.0)
    second = _kohya(tmp_path, family, name="second", seed=2, rank=2, alpha=None)
    base = build_tiny_pipeline(family)
    pipe = build_tiny_pipeline(family)
    LoraSet(pipe, family, _by_path({"first": first, "second": second})).apply([LoraSpec("first", 0.6), LoraSpec("second", -0.3)])

    # by hand, for one layer: W0 + 0.6 * alpha/rank * up1 @ down1 - 0.3 * 1 * up2 @ down2
    layer = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"  # SDXL: LDM names
    one, two = read_lora_file(first).tensors, read_lora_file(second).tensors
    expected = base.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight.detach().clone()
    expected += 0.6 * (2.0 / 4) * (one[f"{layer}.lora_up.weight"] @ one[f"{layer}.lora_down.weight"])
    expected += -0.3 * (two[f"{layer}.lora_up.weight"] @ two[f"{layer}.lora_down.weight"])
    actual = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight
    assert torch.allclose(actual, expected, atol=1e-6)

    reference, _ = _diffusers_fused(family, None, weights=(0.6, -0.3), paths=[first, second])
    assert np.array_equal(_image(pipe), _image(reference))


def test_changing_weights_touches_only_what_changed_and_empty_restores_exactly(tmp_path):
    family = Family.SD1
    unet_only = _kohya(tmp_path, family, name="u", seed=1, components=("unet",))
    te_only = _kohya(tmp_path, family, name="t", seed=2, components=("text_encoder",))
    files = {"u": unet_only, "t": te_only}
    base = build_tiny_pipeline(family)
    pipe = build_tiny_pipeline(family)
    loras = LoraSet(pipe, family, _by_path(files))

    def versions(module):
        return {name: p._version for name, p in module.named_parameters()}

    loras.apply([LoraSpec("u", 1.0), LoraSpec("t", 1.0)])
    unet_before, te_before = versions(pipe.unet), versions(pipe.text_encoder)
    loras.apply([LoraSpec("u", 1.0), LoraSpec("t", 1.0)])  # same set: no work
    assert versions(pipe.unet) == unet_before and versions(pipe.text_encoder) == te_before
    loras.apply([LoraSpec("u", 1.0), LoraSpec("t", 0.5)])  # only the text encoder's LoRA changed
    assert versions(pipe.unet) == unet_before and versions(pipe.text_encoder) != te_before

    fresh = build_tiny_pipeline(family)
    LoraSet(fresh, family, _by_path(files)).apply([LoraSpec("u", 1.0), LoraSpec("t", 0.5)])
    _assert_same_weights(pipe, fresh, ["unet", "text_encoder"])

    loras.apply([])
    _assert_same_weights(pipe, base, ["unet", "text_encoder"])
    assert loras.applied == [] and np.array_equal(_image(pipe), _image(base))


def test_a_renamed_key_fails_naming_it(tmp_path):
    family = Family.SD1
    state = random_kohya_lora(build_tiny_pipeline(family), family)
    good = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"
    renamed = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_qq.lora_down.weight"
    state[renamed] = state.pop(good)
    path = save_lora(state, tmp_path / "renamed.safetensors")
    pipe = build_tiny_pipeline(family)
    base = build_tiny_pipeline(family)
    loras = LoraSet(pipe, family, _by_path({"r": path}))
    with pytest.raises(LoraError) as error:
        loras.apply([LoraSpec("r")])
    assert renamed in str(error.value) and "--lora-partial" in str(error.value)
    _assert_same_weights(pipe, base, ["unet", "text_encoder"])  # nothing was applied

    applied = loras.apply([LoraSpec("r")], partial=True)
    assert renamed in applied[0].unmatched and applied[0].warnings
    assert applied[0].layers == len(state) // 3 - 1
    assert not np.array_equal(_image(pipe), _image(base))


def test_a_lora_for_another_family_is_refused(tmp_path):
    path = _kohya(tmp_path, Family.SDXL)
    with pytest.raises(LoraError, match="this model has no text_encoder_2"):
        LoraSet(build_tiny_pipeline(Family.SD1), Family.SD1, _by_path({"xl": path})).apply([LoraSpec("xl")])


def test_unsupported_lora_variants_are_named(tmp_path):
    family = Family.SD1
    state = random_kohya_lora(build_tiny_pipeline(family), family, components=("unet",))
    state["lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a"] = torch.zeros(2, 2)
    path = save_lora(state, tmp_path / "loha.safetensors")
    with pytest.raises(LoraError, match=r"hada_w1_a \(unsupported LoRA variant \(LyCORIS LoHa\)"):
        LoraSet(build_tiny_pipeline(family), family, _by_path({"x": path})).apply([LoraSpec("x")])


def test_applied_lora_carries_a1111_lora_hash(tmp_path):
    family = Family.SD1
    state = random_kohya_lora(build_tiny_pipeline(family), family, components=("unet",))
    plain = save_lora(state, tmp_path / "plain.safetensors", {"ss_output_name": "plain"})
    stored = save_lora(state, tmp_path / "stored.safetensors", {"sshs_model_hash": "abcdef0123456789" * 4})
    applied = LoraSet(build_tiny_pipeline(family), family, _by_path({"a": plain, "b": stored})).apply(
        [LoraSpec("a"), LoraSpec("b", 0.5)]
    )
    data = plain.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert applied[0].short_hash == hashlib.sha256(data[8 + header :]).hexdigest()[:12]  # A1111's addnet hash
    assert applied[0].sha256 == hashlib.sha256(data).hexdigest()
    assert applied[1].short_hash == "abcdef012345"  # A1111 prefers the hash kohya stored in the header
    assert (applied[1].te_weight, applied[1].unet_weight) == (0.5, 0.5)


def test_the_same_file_twice_is_refused(tmp_path):
    path = _kohya(tmp_path, Family.SD1)
    loras = LoraSet(build_tiny_pipeline(Family.SD1), Family.SD1, lambda name: path)
    with pytest.raises(LoraError, match="asked for twice"):
        loras.apply([LoraSpec("a"), LoraSpec("b")])


def test_other_namings_of_the_same_layers_give_the_same_weights(tmp_path):
    """LDM-named SD1 kohya files, and diffusers' legacy names (which diffusers itself no longer loads)."""
    from hayai.models.single_file import original_unet_name, unet_names_to_original

    family = Family.SD1
    pipe = build_tiny_pipeline(family)
    kohya = random_kohya_lora(pipe, family, rank=4, alpha=2.0)
    original = unet_names_to_original(pipe.unet.config)
    index = ModuleIndex(pipe, family)
    ldm = {}
    for key, value in kohya.items():
        base, _, part = key.partition(".")
        if base.startswith("lora_unet_"):
            path = index.kohya_names("unet")[base[len("lora_unet_") :]][0].module
            base = "lora_unet_" + original_unet_name(path, original).replace(".", "_")
        ldm[f"{base}.{part}"] = value
    assert "lora_unet_input_blocks_1_1_proj_in.lora_down.weight" in ldm
    modern = _diffusers_copy(tmp_path, family, save_lora(kohya, tmp_path / "k.safetensors"))
    legacy = {}
    for key, value in read_lora_file(modern).tensors.items():
        key = key.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight")
        legacy[key.replace(".attn1.to_q.lora.", ".attn1.processor.to_q_lora.")] = value
    assert any(".processor.to_q_lora.down.weight" in k for k in legacy)
    files = {
        "kohya": tmp_path / "k.safetensors",
        "ldm": save_lora(ldm, tmp_path / "ldm.safetensors"),
        "legacy": save_lora(legacy, tmp_path / "legacy.safetensors", read_lora_file(modern).metadata),
    }
    patched = {}
    for name, path in files.items():
        target = build_tiny_pipeline(family)
        applied = LoraSet(target, family, _by_path(files)).apply([LoraSpec(name, 0.9)])
        assert applied[0].layers == len(kohya) // 3
        patched[name] = target
    _assert_same_weights(patched["ldm"], patched["kohya"], ["unet", "text_encoder"])
    _assert_same_weights(patched["legacy"], patched["kohya"], ["unet", "text_encoder"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_half_precision_on_cuda(tmp_path):
    """fp16 on a GPU: the sum is formed in float32 and rounded once (PEFT rounds the update first),
    so weights agree with diffusers' fused ones to half-precision rounding; the base comes back exactly."""
    from hayai.generation.encoding import prompt_kwargs

    family = Family.SDXL
    path = _kohya(tmp_path, family)
    ours = build_tiny_pipeline(family).to("cuda", torch.float16)
    base = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    loras = LoraSet(ours, family, _by_path({"k": path}))
    loras.apply([LoraSpec("k", 0.8)])
    reference = build_tiny_pipeline(family).to("cuda", torch.float16)
    reference.load_lora_weights(str(path), adapter_name="k")
    reference.set_adapters(["k"], [0.8])
    reference.fuse_lora(adapter_names=["k"])
    theirs = {k.replace(".base_layer", ""): v for k, v in reference.unet.state_dict().items() if ".lora_" not in k}
    for key, value in ours.unet.state_dict().items():
        assert torch.allclose(value.float(), theirs[key].float(), rtol=1e-2, atol=1e-3), key
    with torch.no_grad():
        expected = reference.encode_prompt("a cat", device="cuda", negative_prompt="blurry")
    mine, _ = prompt_kwargs(reference, family, "a cat", "blurry", 1, steps=20)
    assert torch.equal(mine["prompt_embeds"], expected[0]) and torch.equal(mine["pooled_prompt_embeds"], expected[2])
    loras.apply([])
    assert all(torch.equal(v, base[k]) for k, v in ours.unet.state_dict().items())
