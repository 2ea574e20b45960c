"""Checkpoint layouts and hooks: the hub repositories' flat config + shards, transformers 4.52's
``model.language_model.`` / ``model.visual.`` names, the language model spec."""

from __future__ import annotations

import json

import pytest
import torch

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.testing.conformance import make_test_image


def _msgs(images, text="Describe the pictures."):
    return [{"role": "user", "content": [*({"type": "image", "image": im} for im in images),
                                         {"type": "text", "text": text}]}]


@pytest.mark.parametrize("layout", ["released", "nested-prefixes"])
def test_layouts_give_the_same_tokens(qwen, layout, tmp_path):
    from vlkit_plugin_qwen import checkpoints

    import vlkit

    family, path, pipe, _ = qwen
    factory = checkpoints.tiny_qwen2_vl if family == "qwen2-vl" else checkpoints.tiny_qwen2_5_vl
    other = factory(tmp_path / layout, seed=3, layout=layout)
    if layout == "released":
        cfg = json.loads((other / "config.json").read_text())
        assert "text_config" not in cfg and cfg["rope_scaling"]["type"] == "mrope"
        assert (other / "model.safetensors.index.json").is_file()
    msgs = _msgs([make_test_image("wide"), make_test_image("tall", seed=1)])
    gen = GenerationConfig(max_new_tokens=8, min_new_tokens=8)
    with vlkit.pipeline(other, engine_config=EngineConfig(session_len=1024, device="cpu", dtype="float32",
                                                          num_blocks=256)) as p2:
        a, b = pipe.prepare_inputs(msgs), p2.prepare_inputs(msgs)
        assert a["input_ids"] == b["input_ids"]
        assert torch.equal(a["mrope_positions"], b["mrope_positions"])
        torch.testing.assert_close(pipe.get_logits(a), p2.get_logits(b))
        assert pipe(msgs, gen_config=gen, use_tqdm=False).token_ids == p2(msgs, gen_config=gen, use_tqdm=False).token_ids


def test_released_layout_reference_agrees(tmp_path):
    """transformers itself reads the flat config to the same model: the reference is the same."""
    from qwen_reference import QwenReference
    from transformers import Qwen2VLForConditionalGeneration
    from vlkit_plugin_qwen.checkpoints import tiny_qwen2_vl

    a = QwenReference(tiny_qwen2_vl(tmp_path / "a", seed=5), Qwen2VLForConditionalGeneration)
    b = QwenReference(tiny_qwen2_vl(tmp_path / "b", seed=5, layout="released"), Qwen2VLForConditionalGeneration)
    msgs = _msgs([make_test_image("square")])
    ra, rb = a(msgs, 4), b(msgs, 4)
    assert ra.prompt_ids == rb.prompt_ids and ra.generated == rb.generated


def test_language_model_spec_flat_and_nested():
    from vlkit_plugin_qwen.hooks import qwen2_vl_language_model_spec

    flat = {"architectures": ["Qwen2VLForConditionalGeneration"], "hidden_size": 64, "num_attention_heads": 4,
            "rope_theta": 1e6, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "tie_word_embeddings": True, "vocab_size": 100, "vision_config": {"depth": 1}}
    spec = qwen2_vl_language_model_spec(flat, "/x")
    assert spec.architecture == "Qwen2ForCausalLM"
    assert "vision_config" not in spec.config and spec.config["tie_word_embeddings"] is True
    assert spec.config["rope_scaling"]["mrope_section"] == [2, 3, 3]
    nested = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "tie_word_embeddings": False,
              "text_config": {"hidden_size": 64, "tie_word_embeddings": True,
                              "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}}
    spec = qwen2_vl_language_model_spec(nested, "/x")
    assert spec.config["tie_word_embeddings"] is True  # pre-v5 saves kept it in text_config
    assert spec.config["rope_parameters"]["mrope_section"] == [16, 24, 24]  # transformers' default
    assert spec.rename("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert spec.rename("model.language_model.norm.weight") == "model.norm.weight"
    assert spec.rename("lm_head.weight") == "lm_head.weight"
    assert spec.rename("visual.blocks.0.attn.qkv.weight") is None
    assert spec.rename("model.visual.merger.ln_q.weight") is None


def test_families_registered():
    from vlkit.contract.registry import get_registry

    reg = get_registry()
    assert reg.family_for_architectures(["Qwen2VLForConditionalGeneration"]).name == "qwen2-vl"
    assert reg.family_for_architectures(["Qwen2_5_VLForConditionalGeneration"]).name == "qwen2.5-vl"


def test_missing_vision_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    from vlkit_plugin_qwen.checkpoints import tiny_qwen2_vl

    import vlkit

    path = tiny_qwen2_vl(tmp_path / "m", seed=0)
    sd = load_file(str(path / "model.safetensors"))
    del sd["visual.merger.mlp.2.weight"]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"visual\.merger\.mlp\.2\.weight"):
        vlkit.pipeline(path, engine_config=EngineConfig(session_len=512, device="cpu", dtype="float32", num_blocks=64))
