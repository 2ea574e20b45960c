"""vlkit hook implementations of the DeepSeek-VL plugin (the ``deepseek`` entry point).

Three families, one per checkpoint layout:

* ``deepseek-vl`` — ``DeepseekVLForConditionalGeneration`` (deepseek-community/deepseek-vl-1.3b-chat);
* ``deepseek-vl-hybrid`` — ``DeepseekVLHybridForConditionalGeneration`` (deepseek-community/deepseek-vl-7b-chat);
* ``deepseek-vl-original`` — ``MultiModalityCausalLM`` (deepseek-ai/deepseek-vl-1.3b-chat, -7b-chat).

This module imports no torch and no transformers: model code loads inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ModelFamily, hookimpl, lazy_factory, template_file

_PKG = "vlkit_plugin_deepseek"
FAMILY_HF = "deepseek-vl"
FAMILY_HYBRID = "deepseek-vl-hybrid"
FAMILY_ORIGINAL = "deepseek-vl-original"


@hookimpl
def vlkit_register_families() -> list[ModelFamily]:
    templates = {"deepseek-vl": template_file(_PKG, "deepseek-vl")}
    return [
        ModelFamily(
            name=FAMILY_HF,
            architectures=("DeepseekVLForConditionalGeneration",),
            chat_templates=dict(templates),
            tiny_checkpoint=lazy_factory("vlkit_plugin_deepseek.checkpoints:tiny_deepseek_vl"),
            description="DeepSeek-VL 1.3b in transformers' format (deepseek-community/deepseek-vl-1.3b-chat)",
        ),
        ModelFamily(
            name=FAMILY_HYBRID,
            architectures=("DeepseekVLHybridForConditionalGeneration",),
            chat_templates=dict(templates),
            tiny_checkpoint=lazy_factory("vlkit_plugin_deepseek.checkpoints:tiny_deepseek_vl_hybrid"),
            description="DeepSeek-VL 7b (SAM-B + SigLIP) in transformers' format (deepseek-community/deepseek-vl-7b-chat)",
        ),
        ModelFamily(
            name=FAMILY_ORIGINAL,
            architectures=("MultiModalityCausalLM",),
            chat_templates=dict(templates),
            tiny_checkpoint=lazy_factory("vlkit_plugin_deepseek.checkpoints:tiny_deepseek_vl_original"),
            description="DeepSeek-VL 1.3b / 7b in the original layout (deepseek-ai/deepseek-vl-7b-chat)",
        ),
    ]


@hookimpl
def vlkit_vision_model(family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any) -> Any:
    from vlkit_plugin_deepseek.vision import DeepseekVisionModel

    return DeepseekVisionModel(family, hf_config, model_path, tokenizer)


@hookimpl
def vlkit_chat_template_wrapper(
    family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    from vlkit_plugin_deepseek.chat import DeepseekHFChatTemplate, DeepseekOriginalChatTemplate

    cls = DeepseekOriginalChatTemplate if family.name == FAMILY_ORIGINAL else DeepseekHFChatTemplate
    return cls(family, hf_config, model_path, tokenizer, chat_template_config)


@hookimpl
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """The original layout keeps a ``LlamaForCausalLM`` under ``language_model.`` with its
    config in ``language_config``. transformers' layouts are left to the core's default
    (``text_config``, ``model.language_model.`` / ``lm_head.``)."""
    if family.name != FAMILY_ORIGINAL:
        return None
    from vlkit.plugin import LanguageModelSpec

    text = hf_config.get("language_config")
    if not isinstance(text, dict):
        raise ValueError(f"{model_path}/config.json has no language_config (MultiModalityCausalLM)")
    config = dict(text)
    config.setdefault("model_type", "llama")
    config["architectures"] = ["LlamaForCausalLM"]
    # LlamaForCausalLM(LlamaConfig(**language_config)): untied unless language_config says so
    # (the outer MultiModalityConfig's tie_word_embeddings ties nothing)
    config.setdefault("tie_word_embeddings", False)
    return LanguageModelSpec(
        architecture="LlamaForCausalLM",
        config=config,
        model_path=str(model_path),
        weight_prefixes=(("language_model.model.", "model."), ("language_model.lm_head.", "lm_head.")),
    )
