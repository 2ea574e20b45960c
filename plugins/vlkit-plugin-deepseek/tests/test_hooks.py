"""Registration and the language-model description."""

from __future__ import annotations

import json

from vlkit.contract.registry import find_family, get_registry
from vlkit.testing import call_hook


def test_families_and_architectures(ckpts):
    names = {f.name: f for f in get_registry().families()}
    for fam in ("deepseek-vl", "deepseek-vl-hybrid", "deepseek-vl-original"):
        assert names[fam].plugin == "deepseek"
    assert find_family(ckpts["hf"]).name == "deepseek-vl"
    assert find_family(ckpts["hybrid"]).name == "deepseek-vl-hybrid"
    assert find_family(ckpts["orig7"]).name == "deepseek-vl-original"


def test_original_language_model_spec(ckpts):
    cfg = json.loads((ckpts["orig7"] / "config.json").read_text())
    spec = call_hook("vlkit_language_model_spec", find_family(cfg), hf_config=cfg, model_path=ckpts["orig7"])
    assert spec.architecture == "LlamaForCausalLM"
    assert spec.config["hidden_size"] == 64 and spec.config["tie_word_embeddings"] is False
    assert spec.rename("language_model.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert spec.rename("language_model.lm_head.weight") == "lm_head.weight"
    assert spec.rename("vision_model.vision_tower_high.vision_tower.pos_embed") is None
    assert spec.rename("aligner.layers.1.weight") is None


def test_hf_layouts_use_core_default_spec(ckpts):
    cfg = json.loads((ckpts["hybrid"] / "config.json").read_text())
    spec = call_hook("vlkit_language_model_spec", find_family(cfg), hf_config=cfg, model_path=ckpts["hybrid"])
    assert spec.rename("model.language_model.norm.weight") == "model.norm.weight"
    assert spec.rename("model.high_res_vision_alpha") is None
