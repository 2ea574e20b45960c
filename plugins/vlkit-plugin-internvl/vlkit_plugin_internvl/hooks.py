"""vlkit hook implementations of the InternVL plugin (the ``vlkit`` entry point).

Two families, one per checkpoint layout:

* ``internvl`` — ``InternVLChatModel`` (OpenGVLab/InternVL2-1B/2B/8B, InternVL2_5-*), the
  original layout: ``vision_model.*``, ``mlp1.*``, ``language_model.*`` (InternLM2, Qwen2 or
  LLaMA under their own names);
* ``internvl-hf`` — ``InternVLForConditionalGeneration`` (transformers' conversion, e.g.
  OpenGVLab/InternVL3-1B-hf).

This module imports no torch and no transformers: model code loads inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ModelFamily, hookimpl, lazy_factory, template_file
from vlkit_plugin_internvl.layout import HF, ORIGINAL

_PKG = "vlkit_plugin_internvl"
FAMILY_ORIGINAL = "internvl"
FAMILY_HF = "internvl-hf"
_ORIGINAL_TEMPLATES = ("internvl2_5", "internlm2-chat", "Hermes-2", "phi3-chat")


@hookimpl
def vlkit_register_families() -> list[ModelFamily]:
    return [
        ModelFamily(
            name=FAMILY_ORIGINAL,
            architectures=(ORIGINAL,),
            chat_templates={name: template_file(_PKG, name) for name in _ORIGINAL_TEMPLATES},
            tiny_checkpoint=lazy_factory("vlkit_plugin_internvl.checkpoints:tiny_internvl_original"),
            description="InternVL2 / InternVL2.5 in the original layout (OpenGVLab/InternVL2-8B)",
        ),
        ModelFamily(
            name=FAMILY_HF,
            architectures=(HF,),
            chat_templates={"internvl-hf": template_file(_PKG, "internvl-hf"),
                            **{name: template_file(_PKG, name) for name in _ORIGINAL_TEMPLATES}},
            tiny_checkpoint=lazy_factory("vlkit_plugin_internvl.checkpoints:tiny_internvl_hf"),
            description="InternVL in transformers' format (OpenGVLab/InternVL3-1B-hf)",
        ),
    ]


@hookimpl
def vlkit_tokenizer(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """InternLM2's tokenizer (InternVL2-2B/8B, InternVL2_5-4B/8B...) by the plugin's own code: the
    checkpoint's ``tokenization_internlm2.py`` is never run, with or without ``trust_remote_code``.
    Other tokenizers (InternVL2-1B's Qwen2 one, the HF layout's) are left to the core."""
    from vlkit_plugin_internvl.internlm2_tokenizer import InternLM2Tokenizer, is_internlm2_tokenizer

    if not is_internlm2_tokenizer(model_path):
        return None
    return InternLM2Tokenizer(model_path)


@hookimpl
def vlkit_vision_model(family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any) -> Any:
    from vlkit_plugin_internvl.vision import InternVLVisionModel

    return InternVLVisionModel(family, hf_config, model_path, tokenizer)


@hookimpl
def vlkit_chat_template_wrapper(
    family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    from vlkit_plugin_internvl.chat import InternVLChatTemplate, InternVLHFChatTemplate

    cls = InternVLChatTemplate if family.name == FAMILY_ORIGINAL else InternVLHFChatTemplate
    return cls(family, hf_config, model_path, tokenizer, chat_template_config)


@hookimpl
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """The original layout's ``llm_config`` and ``language_model.*`` weights.

    Qwen2 / LLaMA keep HF names under ``language_model.`` (``language_model.model.*``,
    ``language_model.lm_head.*``); InternLM2 keeps its own (``language_model.model.tok_embeddings``,
    ``language_model.output``), which the core's InternLM2 backbone reads once the
    ``language_model.`` prefix is dropped. transformers' layout is left to the core's default.
    """
    if family.name != FAMILY_ORIGINAL:
        return None
    return original_language_model_spec(hf_config, model_path)


def original_language_model_spec(hf_config: dict[str, Any], model_path: Path) -> Any:
    from vlkit.plugin import LanguageModelSpec

    llm = dict(hf_config.get("llm_config") or {})
    archs = llm.get("architectures") or []
    arch = archs[0] if archs else None
    # InternVLChatConfig forces tie_word_embeddings=False on the language model
    llm["tie_word_embeddings"] = False
    if arch == "InternLM2ForCausalLM":
        prefixes: tuple[tuple[str, str], ...] = (("language_model.", ""),)
    elif arch in ("Qwen2ForCausalLM", "LlamaForCausalLM", "Phi3ForCausalLM"):
        prefixes = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))
    else:
        raise ValueError(f"InternVLChatModel llm_config names architecture {arch!r}; supported: "
                         "InternLM2ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM, Phi3ForCausalLM")
    return LanguageModelSpec(architecture=arch, config=llm, model_path=str(model_path), weight_prefixes=prefixes)
