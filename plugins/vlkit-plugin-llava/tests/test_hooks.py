"""The plugin as vlkit sees it: entry point, families, hook dispatch, language-model spec."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from vlkit_plugin_llava import hooks

from vlkit.contract.registry import Registry, get_registry
from vlkit.testing import call_hook


def test_entry_point_registers_three_families():
    reg = Registry()  # loads installed entry points
    assert "llava" in [p.name for p in reg.loaded_plugins()]
    table = reg.architecture_table()
    assert table["LlavaForConditionalGeneration"].name == "llava"
    assert table["LlavaNextForConditionalGeneration"].name == "llava-next"
    assert table["LlavaLlamaForCausalLM"].name == "llava-original"
    for fam in reg.families():
        if fam.plugin == "llava":
            assert fam.tiny_checkpoint is not None and fam.chat_templates
            for path in fam.chat_templates.values():
                assert open(path).read().strip()


def test_hooks_module_imports_nothing_heavy():
    code = (
        "import sys, vlkit_plugin_llava.hooks as h; h.vlkit_register_families();"
        "heavy = [m for m in ('torch', 'transformers', 'PIL', 'numpy') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hooks_answer_only_their_own_families(ckpts):
    """vlkit asks only the family's owner: with llava installed beside other plugins, a llava
    checkpoint's parts all come from this plugin (its spec, wrapper and VisionModel classes)."""
    from vlkit_plugin_llava.chat import LlavaHFChatTemplate
    from vlkit_plugin_llava.vision import LlavaVisionModel

    from vlkit.config import ChatTemplateConfig

    cfg = json.loads((ckpts["llava"] / "config.json").read_text())
    parts = get_registry().build(ckpts["llava"], cfg, ChatTemplateConfig())
    assert parts.family.plugin == "llava"
    assert isinstance(parts.chat_template, LlavaHFChatTemplate)
    assert isinstance(parts.vision, LlavaVisionModel)


def test_original_language_model_spec(ckpts):
    from vlkit.engine.loader import tensor_names

    fam = get_registry().get_family("llava-original")
    cfg = json.loads((ckpts["orig16"] / "config.json").read_text())
    spec = call_hook("vlkit_language_model_spec", fam, hf_config=cfg, model_path=ckpts["orig16"])
    assert spec.architecture == "LlamaForCausalLM"
    assert not any(k.startswith("mm_") or k.startswith("image_") for k in spec.config)
    assert spec.config["hidden_size"] == cfg["hidden_size"]
    kept = {n: spec.rename(n) for n in tensor_names(ckpts["orig16"])}
    assert kept["lm_head.weight"] == "lm_head.weight"
    assert kept["model.embed_tokens.weight"] == "model.embed_tokens.weight"
    assert kept["model.layers.0.self_attn.q_proj.weight"] == "model.layers.0.self_attn.q_proj.weight"
    for name, new in kept.items():
        if name.startswith(("model.mm_projector.", "model.vision_tower.", "model.image_newline")):
            assert new is None, name


@pytest.mark.parametrize("name", ["llava", "next"])
def test_hf_layouts_use_the_core_default_spec(ckpts, name):
    """transformers 5 writes llava weights as language_model.model.* / language_model.lm_head.*;
    the core's default maps them (and leaves the vision tensors out)."""
    from vlkit.engine.loader import tensor_names

    fam = get_registry().family_for_architectures(json.loads((ckpts[name] / "config.json").read_text())["architectures"])
    cfg = json.loads((ckpts[name] / "config.json").read_text())
    assert hooks.vlkit_language_model_spec(family=fam, hf_config=cfg, model_path=ckpts[name]) is None
    spec = call_hook("vlkit_language_model_spec", fam, hf_config=cfg, model_path=ckpts[name])
    mapped = {n: spec.rename(n) for n in tensor_names(ckpts[name])}
    lm = {v for v in mapped.values() if v}
    assert "lm_head.weight" in lm and "model.embed_tokens.weight" in lm and "model.norm.weight" in lm
    assert all(v.startswith(("model.", "lm_head.")) for v in lm)
    assert not any("vision" in v or "projector" in v or "newline" in v for v in lm)
