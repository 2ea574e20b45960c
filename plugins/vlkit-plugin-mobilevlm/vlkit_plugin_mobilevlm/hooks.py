"""vlkit hook implementations of the MobileVLM plugin (the ``vlkit`` entry point).

One family, ``mobilevlm``: ``MobileLlamaForCausalLM`` checkpoints (mtgv/MobileVLM-1.7B, -3B,
MobileVLM_V2-1.7B/3B/7B). The language model is LLaMA (MobileLLaMA or Vicuna) on the core's
backbone; the vision side is :class:`vlkit_plugin_mobilevlm.vision.MobileVLMVisionModel`.

This module imports no torch and no transformers: model code loads inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ModelFamily, hookimpl, lazy_factory, template_file
from vlkit_plugin_mobilevlm.layout import ARCHITECTURE

FAMILY = "mobilevlm"


@hookimpl
def vlkit_register_families() -> list[ModelFamily]:
    return [
        ModelFamily(
            name=FAMILY,
            architectures=(ARCHITECTURE,),
            chat_templates={"vicuna-v1": template_file("vlkit", "vicuna-v1")},
            tiny_checkpoint=lazy_factory("vlkit_plugin_mobilevlm.checkpoints:tiny_mobilevlm"),
            description="MobileVLM / MobileVLM V2: CLIP + LDP / LDPv2 projector + MobileLLaMA (mtgv/MobileVLM_V2-1.7B)",
        )
    ]


@hookimpl
def vlkit_vision_model(family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any) -> Any:
    from vlkit_plugin_mobilevlm.vision import MobileVLMVisionModel

    return MobileVLMVisionModel(family, hf_config, model_path, tokenizer)


@hookimpl
def vlkit_chat_template_wrapper(
    family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    from vlkit_plugin_mobilevlm.chat import MobileVLMChatTemplate

    return MobileVLMChatTemplate(family, hf_config, model_path, tokenizer, chat_template_config)


# config.json keys that describe the vision side or training, not the LLaMA backbone
_NOT_TEXT = {
    "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "unfreeze_mm_vision_tower", "use_mm_proj",
    "vision_tower_type", "vision_tower", "tokenizer_model_max_length", "tokenizer_padding_side",
}


@hookimpl
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """MobileLLaMA / Vicuna under ``model.*`` and ``lm_head.*``; the tower and projector are skipped."""
    from vlkit.plugin import LanguageModelSpec

    config = {k: v for k, v in hf_config.items() if k not in _NOT_TEXT and not k.startswith(("mm_", "image_"))}
    config["model_type"] = "llama"
    config["architectures"] = ["LlamaForCausalLM"]
    return LanguageModelSpec(
        "LlamaForCausalLM",
        config,
        str(model_path),
        weight_prefixes=(("model.", "model."), ("lm_head.", "lm_head.")),
        exclude_prefixes=("model.mm_projector.", "model.vision_tower."),
    )
