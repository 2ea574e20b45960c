"""The plugin as vlkit sees it: entry point, family, hook dispatch, language-model spec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from vlkit_plugin_idefics3 import hooks

from vlkit.contract.registry import Registry, get_registry
from vlkit.testing import call_hook


def hf_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_entry_point_registers_the_family():
    reg = Registry()  # loads installed entry points
    assert "idefics3" in [p.name for p in reg.loaded_plugins()]
    fam = reg.architecture_table()["Idefics3ForConditionalGeneration"]
    assert fam.name == "idefics3" and fam.plugin == "idefics3"
    assert fam.tiny_checkpoint is not None
    assert "<end_of_utterance>" in open(fam.chat_templates["idefics3"]).read()


def test_hooks_module_imports_nothing_heavy():
    code = (
        "import sys, vlkit_plugin_idefics3.hooks as h; h.vlkit_register_families();"
        "heavy = [m for m in ('torch', 'transformers', 'PIL', 'numpy') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_builds_this_plugins_parts(ckpts):
    from vlkit_plugin_idefics3.chat import Idefics3ChatTemplate
    from vlkit_plugin_idefics3.vision import Idefics3VisionModel

    from vlkit.config import ChatTemplateConfig

    parts = get_registry().build(ckpts["split"], hf_config(ckpts["split"]), ChatTemplateConfig())
    assert parts.family.plugin == "idefics3"
    assert isinstance(parts.chat_template, Idefics3ChatTemplate)
    assert isinstance(parts.vision, Idefics3VisionModel)


@pytest.mark.parametrize("name", ["split", "tied"])
def test_spec_maps_every_text_weight_and_excludes_vision(ckpts, hf_models, name):
    from vlkit.engine.loader import tensor_names

    path = ckpts[name]
    cfg = hf_config(path)
    spec = call_hook("vlkit_language_model_spec", "idefics3", hf_config=cfg, model_path=path)
    assert spec.architecture == "LlamaForCausalLM"
    assert spec.config["hidden_size"] == cfg["text_config"]["hidden_size"]
    mapped = {n: spec.rename(n) for n in tensor_names(path)}
    for n, new in mapped.items():
        if n.startswith(("model.vision_model.", "model.connector.")):
            assert new is None, n
        else:
            assert new is not None, n
    got = {v for v in mapped.values() if v}
    # exactly the names of a LlamaForCausalLM with these weights
    model, _ = hf_models[name]
    want = {"model." + k for k in model.model.text_model.state_dict()}
    if not spec.config["tie_word_embeddings"]:
        want.add("lm_head.weight")
    assert got == want
    assert spec.config["tie_word_embeddings"] is (name == "tied")


def test_tie_word_embeddings_rules():
    tie = hooks.tie_word_embeddings
    assert tie({"tie_word_embeddings": True, "text_config": {"tie_word_embeddings": False}}) is True
    # transformers 5 reads the top-level flag (Idefics3Config's own), not text_config's
    assert tie({"tie_word_embeddings": False, "text_config": {"tie_word_embeddings": True}},
               ["lm_head.weight"]) is False
    assert tie({"text_config": {"tie_word_embeddings": True}}) is True  # no top-level flag: text_config's
    assert tie({"text_config": {}}) is False
    # "untied" but no lm_head in the checkpoint: only tying makes sense
    assert tie({"tie_word_embeddings": False, "text_config": {}}, ["model.text_model.embed_tokens.weight"]) is True


def test_tied_checkpoint_has_no_lm_head(ckpts):
    from vlkit.engine.loader import tensor_names

    assert "lm_head.weight" not in tensor_names(ckpts["tied"])
    assert "lm_head.weight" in tensor_names(ckpts["split"])


def test_non_llama_text_config_is_refused(ckpts):
    cfg = hf_config(ckpts["split"])
    cfg["text_config"]["model_type"] = "mistral"
    with pytest.raises(ValueError, match="mistral"):
        call_hook("vlkit_language_model_spec", "idefics3", hf_config=cfg, model_path=ckpts["split"])
