"""The plugin as installed: entry point, families, architectures, templates, tiny checkpoints."""

from __future__ import annotations

import json

from vlkit.contract.registry import Registry


def test_entry_point_registers_both_families():
    reg = Registry()
    assert not [p for p in reg.failed_plugins() if p.name == "internvl"]
    table = reg.architecture_table()
    assert table["InternVLChatModel"].name == "internvl"
    assert table["InternVLForConditionalGeneration"].name == "internvl-hf"
    fam = reg.get_family("internvl")
    assert set(fam.chat_templates) == {"internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat"}
    assert fam.tiny_checkpoint is not None and reg.get_family("internvl-hf").tiny_checkpoint is not None


def test_hooks_module_is_light():
    import subprocess
    import sys

    code = ("import sys, vlkit_plugin_internvl.hooks as h; h.vlkit_register_families(); "
            "print(any(m in sys.modules for m in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_original_checkpoint_looks_released(ckpts):
    cfg = json.loads((ckpts["internlm2"] / "config.json").read_text())
    assert cfg["architectures"] == ["InternVLChatModel"] and cfg["template"] == "internlm2-chat"
    assert cfg["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert (ckpts["internlm2"] / "model.safetensors.index.json").is_file()
    cfg = json.loads((ckpts["qwen2"] / "config.json").read_text())
    assert cfg["template"] == "Hermes-2" and cfg["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    gen = json.loads((ckpts["qwen2"] / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpts["qwen2"]))
    assert tok.convert_tokens_to_ids("<|im_end|>") in gen["eos_token_id"]
