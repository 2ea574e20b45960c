"""vlkit hook implementations of the LLaVA plugin (the ``vlkit`` entry point).

Three families, one per checkpoint layout:

* ``llava`` — ``LlavaForConditionalGeneration`` (llava-hf/llava-1.5-*-hf);
* ``llava-next`` — ``LlavaNextForConditionalGeneration`` (llava-hf/llava-v1.6-*-hf);
* ``llava-original`` — ``LlavaLlamaForCausalLM`` (liuhaotian/llava-v1.5-*, llava-v1.6-vicuna-*) and
  ``LlavaMistralForCausalLM`` (liuhaotian/llava-v1.6-mistral-7b).

This module imports no torch and no transformers: model code loads inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ModelFamily, hookimpl, lazy_factory, template_file
from vlkit_plugin_llava.layout import HF_LLAVA, HF_LLAVA_NEXT, ORIGINAL_LLAVA, ORIGINAL_LLAVA_MISTRAL

_PKG = "vlkit_plugin_llava"
FAMILY_LLAVA = "llava"
FAMILY_NEXT = "llava-next"
FAMILY_ORIGINAL = "llava-original"


@hookimpl
def vlkit_register_families() -> list[ModelFamily]:
    return [
        ModelFamily(
            name=FAMILY_LLAVA,
            architectures=(HF_LLAVA,),
            chat_templates={"llava-hf": template_file(_PKG, "llava-hf"), "llava-v1": template_file("vlkit", "llava-v1")},
            tiny_checkpoint=lazy_factory("vlkit_plugin_llava.checkpoints:tiny_llava"),
            description="LLaVA-1.5 in transformers' format (llava-hf/llava-1.5-7b-hf)",
        ),
        ModelFamily(
            name=FAMILY_NEXT,
            architectures=(HF_LLAVA_NEXT,),
            chat_templates={
                "llava-next-vicuna-hf": template_file(_PKG, "llava-next-vicuna-hf"),
                "llava-v1": template_file("vlkit", "llava-v1"),
            },
            tiny_checkpoint=lazy_factory("vlkit_plugin_llava.checkpoints:tiny_llava_next"),
            description="LLaVA-NeXT / 1.6 in transformers' format, anyres tiling (llava-hf/llava-v1.6-vicuna-7b-hf)",
        ),
        ModelFamily(
            name=FAMILY_ORIGINAL,
            architectures=(ORIGINAL_LLAVA, ORIGINAL_LLAVA_MISTRAL),
            chat_templates={"llava-v1": template_file("vlkit", "llava-v1"), "vicuna-v1": template_file("vlkit", "vicuna-v1"),
                            "llava-mistral-instruct": template_file(_PKG, "llava-mistral-instruct")},
            tiny_checkpoint=lazy_factory("vlkit_plugin_llava.checkpoints:tiny_llava_original"),
            description="LLaVA-1.5 / 1.6 in the original repository's layout (liuhaotian/llava-v1.5-7b, "
                        "llava-v1.6-mistral-7b)",
        ),
    ]


@hookimpl
def vlkit_vision_model(family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any) -> Any:
    from vlkit_plugin_llava.vision import LlavaVisionModel

    return LlavaVisionModel(family, hf_config, model_path, tokenizer)


@hookimpl
def vlkit_chat_template_wrapper(
    family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    from vlkit_plugin_llava.chat import LlavaHFChatTemplate, LlavaOriginalChatTemplate

    cls = LlavaOriginalChatTemplate if family.name == FAMILY_ORIGINAL else LlavaHFChatTemplate
    return cls(family, hf_config, model_path, tokenizer, chat_template_config)


@hookimpl
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """The original layout is a LLaMA (or Mistral) checkpoint with extra ``model.mm_*`` tensors.

    transformers' layouts are left to the core's default (``text_config`` and the
    ``language_model.`` / ``model.language_model.`` prefixes).
    """
    if family.name != FAMILY_ORIGINAL:
        return None
    from vlkit.plugin import LanguageModelSpec

    drop = {
        "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "use_mm_proj",
        "tokenizer_model_max_length", "tokenizer_padding_side",
    }
    config = {k: v for k, v in hf_config.items() if k not in drop and not k.startswith(("mm_", "image_"))}
    mistral = ORIGINAL_LLAVA_MISTRAL in (hf_config.get("architectures") or [])
    arch = "MistralForCausalLM" if mistral else "LlamaForCausalLM"
    config["model_type"] = "mistral" if mistral else "llama"
    config["architectures"] = [arch]
    return LanguageModelSpec(
        architecture=arch,
        config=config,
        model_path=str(model_path),
        weight_prefixes=(("model.", "model."), ("lm_head.", "lm_head.")),
        exclude_prefixes=("model.mm_projector.", "model.vision_tower.", "model.image_newline"),
    )
