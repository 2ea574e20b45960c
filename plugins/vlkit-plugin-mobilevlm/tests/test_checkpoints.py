"""The tiny factory writes what the released MobileVLM checkpoints hold."""

from __future__ import annotations

import json

import pytest
from vlkit_plugin_mobilevlm.checkpoints import clip_tower_path, tiny_mobilevlm
from vlkit_plugin_mobilevlm.vision import _checkpoint_tensor_names


@pytest.mark.parametrize(("name", "projector"), [("v1", "ldpnet"), ("v2", "ldpnetv2")])
def test_config_is_the_released_layout(ckpts, name, projector):
    cfg = json.loads((ckpts[name] / "config.json").read_text())
    assert cfg["architectures"] == ["MobileLlamaForCausalLM"] and cfg["model_type"] == "mobilevlm"
    assert cfg["mm_projector_type"] == projector
    assert cfg["vision_tower_type"] == "clip"
    assert cfg["mm_vision_select_layer"] == -2 and cfg["mm_vision_select_feature"] == "patch"
    assert cfg["image_aspect_ratio"] == "pad" and cfg["mm_use_im_start_end"] is False
    assert cfg["mm_use_im_patch_token"] is False  # else the original adds <im_patch> and resizes the vocab
    assert cfg["mm_vision_tower"] == str(clip_tower_path(ckpts[name]))
    tower = json.loads((clip_tower_path(ckpts[name]) / "config.json").read_text())
    assert cfg["mm_hidden_size"] == tower["hidden_size"]
    assert (clip_tower_path(ckpts[name]) / "preprocessor_config.json").is_file()


def test_released_format_is_pytorch_model_bin(ckpts):
    assert (ckpts["v1"] / "pytorch_model.bin").is_file()
    assert not list(ckpts["v1"].glob("*.safetensors"))
    assert (ckpts["v2-st"] / "model.safetensors.index.json").is_file()
    assert len(list(ckpts["v2-st"].glob("model-*.safetensors"))) == 2


@pytest.mark.parametrize("name", ["v1", "v2", "v2-st"])
def test_tensor_names(ckpts, name):
    names = set(_checkpoint_tensor_names(ckpts[name]))
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"} <= names
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in names
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight" in names
    proj = {n for n in names if n.startswith("model.mm_projector.")}
    if name == "v1":
        assert "model.mm_projector.model.mlp.1.weight" in proj
        assert "model.mm_projector.model.mb_block.1.block.1.fc1.weight" in proj
        assert "model.mm_projector.model.mb_block.2.block.2.1.bias" in proj
    else:
        assert proj == {f"model.mm_projector.{k}" for k in (
            "mlp.mlp.0.weight", "mlp.mlp.0.bias", "mlp.mlp.2.weight", "mlp.mlp.2.bias", "peg.peg.0.weight",
            "peg.peg.0.bias")}


def test_without_tower_copy(ckpts):
    assert not any(n.startswith("model.vision_tower.") for n in _checkpoint_tensor_names(ckpts["v1-notower"]))


def test_tokenizer_matches_the_vocab(ckpts):
    """``load_pretrained_model`` resizes the embeddings to ``len(tokenizer)``: equal here, as released."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpts["v1"]))
    cfg = json.loads((ckpts["v1"] / "config.json").read_text())
    assert len(tok) == cfg["vocab_size"]
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.unk_token == "<unk>"
    assert tok("hi").input_ids[0] == tok.bos_token_id
    assert "<image>" not in tok.get_vocab()


def test_configurable_grid(tmp_path):
    from vlkit_plugin_mobilevlm.vision import MobileVLMVisionModel

    from vlkit.config import VisionConfig

    path = tiny_mobilevlm(tmp_path / "m", version="v1", image_size=98, patch_size=14)  # 7x7 -> 4x4
    cfg = json.loads((path / "config.json").read_text())
    assert MobileVLMVisionModel(None, cfg, path, VisionConfig()).num_tokens == 16
    with pytest.raises(ValueError, match="multiple"):
        tiny_mobilevlm(tmp_path / "bad", version="v1", image_size=100, patch_size=14)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="version"):
        tiny_mobilevlm(tmp_path / "a", version="v3")
    with pytest.raises(ValueError, match="fmt"):
        tiny_mobilevlm(tmp_path / "b", fmt="gguf")
