"""The tiny checkpoint factories write real, deterministic, loadable layouts."""

from __future__ import annotations

import json

import pytest
import torch
from vlkit_plugin_llava import checkpoints as c

from vlkit.engine.loader import read_tensors, tensor_names


def test_deterministic(ckpts, tmp_path):
    again = c.tiny_llava(tmp_path / "again")
    a = read_tensors(ckpts["llava"], lambda n: n)
    b = read_tensors(again, lambda n: n)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_checkpoints_load_in_transformers(ckpts):
    from transformers import AutoProcessor, AutoTokenizer

    for name in ("llava", "next"):
        proc = AutoProcessor.from_pretrained(ckpts[name])
        tok = AutoTokenizer.from_pretrained(ckpts[name])
        assert proc.num_additional_image_tokens == 1 and proc.patch_size == 14
        cfg = json.loads((ckpts[name] / "config.json").read_text())
        assert cfg["image_token_index"] == tok.convert_tokens_to_ids("<image>")
        assert tok.pad_token == "<pad>" and tok.bos_token == "<s>" and tok.eos_token == "</s>"
        assert (ckpts[name] / "chat_template.jinja").is_file()


def test_original_layout_is_the_same_weights(ckpts):
    cfg = json.loads((ckpts["orig16"] / "config.json").read_text())
    twin_cfg = json.loads((ckpts["next"] / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaLlamaForCausalLM"] and cfg["model_type"] == "llava"
    assert cfg["image_grid_pinpoints"] == [[w, h] for h, w in twin_cfg["image_grid_pinpoints"]]
    assert cfg["mm_patch_merge_type"] == "spatial_unpad" and cfg["image_aspect_ratio"] == "anyres"
    names = tensor_names(ckpts["orig16"])
    assert (ckpts["orig16"] / "model.safetensors.index.json").is_file()
    assert "model.mm_projector.0.weight" in names and "model.mm_projector.2.bias" in names
    assert "model.image_newline" in names and "lm_head.weight" in names
    assert any(n.startswith("model.vision_tower.vision_tower.vision_model.encoder.layers.0.") for n in names)
    orig = read_tensors(ckpts["orig16"], lambda n: n)
    twin = read_tensors(ckpts["next"], lambda n: n)
    pairs = {
        "model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
        "lm_head.weight": "language_model.lm_head.weight",
        "model.mm_projector.2.weight": "multi_modal_projector.linear_2.weight",
        "model.image_newline": "image_newline",
    }
    for o, t in pairs.items():
        assert torch.equal(orig[o], twin[t]), o


def test_original_15_config_and_tower(ckpts):
    cfg = json.loads((ckpts["orig15"] / "config.json").read_text())
    assert cfg["image_aspect_ratio"] == "pad" and cfg["mm_projector_type"] == "mlp2x_gelu"
    assert cfg["mm_vision_select_layer"] == -2 and cfg["mm_vision_select_feature"] == "patch"
    tower = c.clip_tower_path(ckpts["orig15"])
    assert cfg["mm_vision_tower"] == str(tower) and tower.is_absolute()
    assert json.loads((tower / "config.json").read_text())["architectures"] == ["CLIPVisionModel"]
    assert all(n.startswith("vision_model.") for n in tensor_names(tower))
    assert (tower / "preprocessor_config.json").is_file()
    assert not any(n.startswith("model.vision_tower") for n in tensor_names(ckpts["orig15"]))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpts["orig15"])
    assert "<image>" not in tok.get_vocab() and tok.pad_token == "<unk>"


@pytest.mark.slow
def test_w1_size(tmp_path):
    """BENCH.md's W1 llava-60m: CLIP 256/1024/4 layers/4 heads/224 px, LLaMA 512/1408/8/8/4, vocab 32000."""
    path = c.tiny_llava(tmp_path / "w1", size="w1")
    cfg = json.loads((path / "config.json").read_text())
    v, t = cfg["vision_config"], cfg["text_config"]
    assert (v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["num_attention_heads"]) == (256, 1024, 4, 4)
    assert (v["image_size"], v["patch_size"]) == (224, 14)
    assert (t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]) == (512, 1408, 8)
    assert (t["num_attention_heads"], t["num_key_value_heads"], t["vocab_size"]) == (8, 4, 32000)
    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(path)) == 32000
    n = sum(t.numel() for t in read_tensors(path, lambda n: n).values())
    assert 50e6 < n < 70e6
