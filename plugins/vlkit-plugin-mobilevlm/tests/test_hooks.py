"""The plugin as vlkit sees it: entry point, family, hook dispatch, language-model spec."""

from __future__ import annotations

import json
import subprocess
import sys

from vlkit_plugin_mobilevlm import hooks

from vlkit.registry import ModelFamily, Registry, get_registry


def test_entry_point_registers_the_family():
    reg = Registry()
    assert "mobilevlm" in [p.name for p in reg.loaded_plugins()]
    fam = reg.architecture_table()["MobileLlamaForCausalLM"]
    assert fam.name == "mobilevlm" and fam.tiny_checkpoint is not None
    assert "vicuna-v1" in fam.chat_templates
    for path in fam.chat_templates.values():
        assert "curious user" in open(path).read()


def test_hooks_module_imports_nothing_heavy():
    code = (
        "import sys, vlkit_plugin_mobilevlm.hooks as h; h.vlkit_register_families();"
        "heavy = [m for m in ('torch', 'transformers', 'PIL', 'numpy') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_foreign_families_get_none(tmp_path):
    other = ModelFamily("llava", ("LlavaForConditionalGeneration",))
    assert hooks.vlkit_vision_model(family=other, hf_config={}, model_path=tmp_path, vision_config=None) is None
    assert hooks.vlkit_chat_template_wrapper(
        family=other, hf_config={}, model_path=tmp_path, tokenizer=None, chat_template_config=None
    ) is None
    assert hooks.vlkit_language_model_spec(family=other, hf_config={}, model_path=tmp_path) is None


def test_language_model_spec(ckpts):
    from vlkit_plugin_mobilevlm.vision import _checkpoint_tensor_names

    path = ckpts["v1"]
    fam = get_registry().get_family("mobilevlm")
    cfg = json.loads((path / "config.json").read_text())
    spec = get_registry().pm.hook.vlkit_language_model_spec(family=fam, hf_config=cfg, model_path=path)
    assert spec.architecture == "LlamaForCausalLM"
    assert spec.config["model_type"] == "llama"
    assert not any(k.startswith(("mm_", "image_")) or k == "vision_tower_type" for k in spec.config)
    assert spec.config["hidden_size"] == cfg["hidden_size"]
    names = _checkpoint_tensor_names(path)
    kept = {n: spec.rename(n) for n in names}
    assert kept["lm_head.weight"] == "lm_head.weight"
    assert kept["model.embed_tokens.weight"] == "model.embed_tokens.weight"
    assert kept["model.layers.0.self_attn.q_proj.weight"] == "model.layers.0.self_attn.q_proj.weight"
    assert any(n.startswith("model.vision_tower.") for n in names) and any(n.startswith("model.mm_projector.") for n in names)
    for name, new in kept.items():
        if name.startswith(("model.mm_projector.", "model.vision_tower.")):
            assert new is None, name
        else:
            assert new == name, name


def test_list_models_shows_the_family():
    out = subprocess.run([sys.executable, "-m", "vlkit.cli", "list-models", "--json"], capture_output=True, text=True,
                         check=True)
    fams = {f["name"]: f for f in json.loads(out.stdout)["families"]}
    assert fams["mobilevlm"]["architectures"] == ["MobileLlamaForCausalLM"]
    assert fams["mobilevlm"]["plugin"] == "mobilevlm"
