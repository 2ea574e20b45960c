"""Checkpoint formats, name mapping, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from engine_helpers import prompts
from safetensors.torch import load_file, save_file

from vlkit.config import EngineConfig
from vlkit.engine import LLMEngine
from vlkit.engine.loader import checkpoint_files, load_backbone, text_model_spec
from vlkit.layers.weights import WeightLoadError
from vlkit.models.llama import LlamaForCausalLM
from vlkit.models.spec import LanguageModelSpec


@pytest.fixture(scope="module")
def reference_logits(llama_path):
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=16, device="cpu")) as eng:
        return eng.get_logits(prompts(1)[0])


def _logits(path):
    with LLMEngine.from_pretrained(path, EngineConfig(num_blocks=16, device="cpu")) as eng:
        return eng.get_logits(prompts(1)[0])


def test_sharded_safetensors(tmp_path, llama_path, reference_logits):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(llama_path).save_pretrained(out, max_shard_size="100KB")
    kind, files = checkpoint_files(str(out))
    assert kind == "safetensors" and len(files) > 1
    assert (out / "model.safetensors.index.json").exists()
    torch.testing.assert_close(_logits(str(out)), reference_logits)


def test_pytorch_bin_single_and_sharded(tmp_path, llama_path, reference_logits):
    sd = load_file(os.path.join(llama_path, "model.safetensors"))
    single = tmp_path / "bin"
    shutil.copytree(llama_path, single)
    os.remove(single / "model.safetensors")
    torch.save(sd, single / "pytorch_model.bin")
    assert checkpoint_files(str(single))[0] == "bin"
    torch.testing.assert_close(_logits(str(single)), reference_logits)

    sharded = tmp_path / "bin_sharded"
    shutil.copytree(single, sharded)
    os.remove(sharded / "pytorch_model.bin")
    names = sorted(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({n: sd[n] for n in part}, sharded / fname)
        weight_map.update({n: fname for n in part})
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    kind, files = checkpoint_files(str(sharded))
    assert kind == "bin" and len(files) == 2
    torch.testing.assert_close(_logits(str(sharded)), reference_logits)


def _edited_copy(src, dst, edit):
    shutil.copytree(src, dst)
    sd = load_file(os.path.join(dst, "model.safetensors"))
    edit(sd)
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return text_model_spec(str(dst))


def test_missing_tensor_is_named(tmp_path, llama_path):
    spec = _edited_copy(llama_path, tmp_path / "m", lambda sd: sd.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(WeightLoadError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_backbone(spec)
    spec = _edited_copy(llama_path, tmp_path / "k", lambda sd: sd.pop("model.layers.0.self_attn.k_proj.weight"))
    with pytest.raises(WeightLoadError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight"):
        load_backbone(spec)


def test_misshaped_tensor_is_named_with_shapes(tmp_path, llama_path):
    def edit(sd):
        sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(100, 64)

    spec = _edited_copy(llama_path, tmp_path / "m", edit)
    with pytest.raises(WeightLoadError) as ei:
        load_backbone(spec)
    msg = str(ei.value)
    assert "model.layers.0.mlp.up_proj.weight" in msg
    assert "(128, 64)" in msg and "(100, 64)" in msg


def test_spec_prefix_mapping_skips_other_tensors(tmp_path, llama_path, reference_logits):
    # a VLM-style checkpoint: language model under a prefix, plus a vision tower to ignore
    sd = load_file(os.path.join(llama_path, "model.safetensors"))
    vlm = {"language_model." + k: v for k, v in sd.items()}
    vlm["vision_tower.patch.weight"] = torch.zeros(3, 3)
    os.makedirs(tmp_path / "vlm")
    save_file(vlm, str(tmp_path / "vlm" / "model.safetensors"), metadata={"format": "pt"})
    base = text_model_spec(llama_path)
    spec = LanguageModelSpec(base.architecture, base.config, str(tmp_path / "vlm"),
                             weight_prefixes=(("language_model.", ""),))
    with LLMEngine(spec, EngineConfig(num_blocks=16, device="cpu")) as eng:
        torch.testing.assert_close(eng.get_logits(prompts(1)[0]), reference_logits)


def test_spec_that_maps_nothing_says_so(llama_path):
    """A family whose spec prefixes match no tensor (or rename to names the backbone lacks) gets
    told that, with the prefixes it gave and names the checkpoint has, not just 'all missing'."""
    base = text_model_spec(llama_path)
    wrong_src = LanguageModelSpec(base.architecture, base.config, llama_path,
                                  weight_prefixes=(("language_model.model.", "model."),))
    with pytest.raises(WeightLoadError, match=r"matched the spec's weight_prefixes \('language_model\.model\.' "
                                              r"-> 'model\.'\); its tensors are named like \['") as ei:
        load_backbone(wrong_src)
    assert "model.embed_tokens.weight" in str(ei.value) or "model.layers.0" in str(ei.value)
    wrong_dst = LanguageModelSpec(base.architecture, base.config, llama_path, weight_prefixes=(("model.", "llm."),))
    with pytest.raises(WeightLoadError, match=r"renamed tensors .* to names like \['llm\."):
        load_backbone(wrong_dst)


def test_text_model_spec(llama_path):
    spec = text_model_spec(llama_path)
    assert spec.architecture == "LlamaForCausalLM"
    assert spec.config["hidden_size"] == 64
    assert spec.rename("model.norm.weight") == "model.norm.weight"


class PluginBackbone(LlamaForCausalLM):
    """A backbone a plugin adds (module level, so workers can import it by name)."""


def test_plugin_backbone_lookup():
    from vlkit.contract.hookspecs import hookimpl
    from vlkit.contract.registry import Registry
    from vlkit.models.backbones import get_backbone_class

    class Plugin:
        @staticmethod
        @hookimpl
        def vlkit_language_backbones():
            return {"QWenLMHeadModel": PluginBackbone, "LlamaForCausalLM": PluginBackbone}

    reg = Registry(load_entry_points=False)
    reg.register(Plugin, name="backbones")
    spec = reg._with_backbone(LanguageModelSpec("QWenLMHeadModel", {}, "/x"))
    assert spec.backbone == f"{__name__}:PluginBackbone"  # workers import it from this string alone
    assert get_backbone_class(spec.architecture, spec.backbone) is PluginBackbone
    assert reg._with_backbone(LanguageModelSpec("LlamaForCausalLM", {}, "/x")).backbone == ""
    assert get_backbone_class("LlamaForCausalLM", "elsewhere:Other") is LlamaForCausalLM  # built-ins win
    assert "QWenLMHeadModel" in reg.text_architectures()
    with pytest.raises(ValueError, match="NoSuchLM"):
        get_backbone_class("NoSuchLM")
