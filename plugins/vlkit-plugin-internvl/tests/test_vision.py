"""The VisionModel against transformers' ``InternVLModel.get_image_features`` on the same weights,
in both layouts; options and weight errors; the language-model spec of the original layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vlkit_plugin_internvl import weights
from vlkit_plugin_internvl.hooks import original_language_model_spec
from vlkit_plugin_internvl.vision import InternVLVisionModel, InternVLWeightError

from vlkit.engine.loader import read_tensors


def build(path: Path) -> InternVLVisionModel:
    vm = InternVLVisionModel(None, json.loads((path / "config.json").read_text()), path)
    vm.build_preprocessor()
    vm.build_model()
    return vm


@pytest.fixture(scope="module")
def models(ckpts):
    return {k: build(v) for k, v in ckpts.items()}


@pytest.fixture(scope="module")
def hf_models(ckpts):
    from transformers import InternVLForConditionalGeneration

    return {k: InternVLForConditionalGeneration.from_pretrained(str(ckpts[k]), dtype=torch.float32).eval()
            for k in ("hf", "hf-llama")}


def image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


IMAGES = [image(56, 56), image(190, 70, 1), image(40, 150, 2), image(300, 300, 3)]


@pytest.mark.parametrize("layout,hf", [("hf", "hf"), ("qwen2", "hf"), ("hf-llama", "hf-llama"), ("internlm2", "hf-llama")])
def test_features_equal_transformers(models, hf_models, layout, hf):
    vm = models[layout]
    items = vm.preprocess(IMAGES, [{}] * len(IMAGES))
    tiles = [it.meta["tiles"] for it in items]
    assert tiles == [1, 4, 5, 5]  # 1x1; 3x1 + thumbnail; 1x4 + thumbnail; 2x2 + thumbnail
    feats = vm.forward(items)  # one batched forward
    model = hf_models[hf]
    for it, f in zip(items, feats):
        assert f.shape == (it.num_tokens, 64) and it.num_tokens == 4 * it.meta["tiles"]
        with torch.no_grad():
            ref = model.model.get_image_features(pixel_values=it.data["pixel_values"]).pooler_output
        torch.testing.assert_close(f, ref.reshape(-1, ref.shape[-1]), atol=1e-5, rtol=1e-5)


def test_same_pixels_in_both_layouts(models):
    a = models["hf"].preprocess(IMAGES, [{}] * 4)
    b = models["qwen2"].preprocess(IMAGES, [{}] * 4)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.data["pixel_values"], y.data["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["hf", "qwen2"])
def test_max_dynamic_patch_per_image(models, layout):
    vm = models[layout]
    img = image(300, 300, 3)
    default, one, four = vm.preprocess([img] * 3, [{}, {"max_dynamic_patch": 1}, {"max_dynamic_patch": 4}])
    assert (default.meta["tiles"], one.meta["tiles"], four.meta["tiles"]) == (5, 1, 5)
    assert vm.preprocess([image(400, 60)], [{"max_dynamic_patch": 4}])[0].meta["grid"] == (4, 1)
    assert vm.preprocess([image(400, 60)], [{"max_dynamic_patch": 2}])[0].meta["tiles"] == 3
    with pytest.raises(ValueError, match="max_dynamic_patch"):
        vm.preprocess([img], [{"max_dynamic_patch": 0}])
    with pytest.raises(ValueError, match="max_pixels"):
        vm.preprocess([img], [{"max_pixels": 10}])


def test_config_default_max_dynamic_patch(ckpts, tmp_path):
    from vlkit_plugin_internvl.checkpoints import tiny_internvl_original

    path = tiny_internvl_original(tmp_path / "m2", llm="qwen2", hf_checkpoint=ckpts["hf"], max_dynamic_patch=2)
    vm = InternVLVisionModel(None, json.loads((path / "config.json").read_text()), path)
    vm.build_preprocessor()
    assert vm.preprocess([image(300, 300)], [{}])[0].meta["tiles"] == 1
    item = vm.preprocess([image(300, 140)], [{}])[0]  # (3, 1) would fit better, but the config caps at 2
    assert (item.meta["grid"], item.meta["tiles"]) == ((2, 1), 3)


def test_reads_only_vision_tensors(ckpts):
    for key, kind in (("internlm2", "original"), ("hf", "hf")):
        names = read_tensors(ckpts[key], weights.wanted_for(kind, 2))
        assert names and not any("language_model" in n or "lm_head" in n for n in names)


def test_missing_vision_tensor_is_named(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    src = ckpts["qwen2"]
    dst = tmp_path / "broken"
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(src / "model.safetensors"))
    del sd["mlp1.1.weight"]
    sd["vision_model.encoder.layers.0.attn.qkv.weight"] = sd["vision_model.encoder.layers.0.attn.qkv.weight"][:-1]
    save_file(sd, str(dst / "model.safetensors"))
    with pytest.raises(InternVLWeightError, match=r"mlp1\.1\.weight.*attn\.qkv\.weight|attn\.qkv\.weight.*mlp1"):
        build(dst)


def test_language_model_spec(ckpts):
    cfg = json.loads((ckpts["internlm2"] / "config.json").read_text())
    spec = original_language_model_spec(cfg, ckpts["internlm2"])
    assert spec.architecture == "InternLM2ForCausalLM" and spec.config["tie_word_embeddings"] is False
    assert spec.rename("language_model.model.tok_embeddings.weight") == "model.tok_embeddings.weight"
    assert spec.rename("language_model.output.weight") == "output.weight"
    assert spec.rename("vision_model.embeddings.class_embedding") is None
    cfg = json.loads((ckpts["qwen2"] / "config.json").read_text())
    spec = original_language_model_spec(cfg, ckpts["qwen2"])
    assert spec.architecture == "Qwen2ForCausalLM"
    assert spec.rename("language_model.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert spec.rename("language_model.lm_head.weight") == "lm_head.weight"
    assert spec.rename("mlp1.0.weight") is None
    spec = original_language_model_spec({"llm_config": {"architectures": ["Phi3ForCausalLM"]}}, ckpts["qwen2"])
    assert spec.rename("language_model.model.layers.0.mlp.gate_up_proj.weight") == "model.layers.0.mlp.gate_up_proj.weight"
    with pytest.raises(ValueError, match="supported: .*Phi3ForCausalLM"):
        original_language_model_spec({"llm_config": {"architectures": ["GemmaForCausalLM"]}}, ckpts["qwen2"])
