"""vlkit hook implementations of the Idefics3 plugin (the ``vlkit`` entry point).

One family, ``idefics3``: ``Idefics3ForConditionalGeneration`` checkpoints in transformers'
format (HuggingFaceM4/Idefics3-8B-Llama3, HuggingFaceTB/SmolVLM-*).

This module imports no torch and no transformers: model code loads inside the hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ModelFamily, hookimpl, lazy_factory, template_file

_PKG = "vlkit_plugin_idefics3"
FAMILY = "idefics3"
ARCHITECTURE = "Idefics3ForConditionalGeneration"

# where Idefics3ForConditionalGeneration keeps its parts
TEXT_PREFIX = "model.text_model."
LM_HEAD_PREFIX = "lm_head."
VISION_PREFIXES = ("model.vision_model.", "model.connector.")


@hookimpl
def vlkit_register_families() -> list[ModelFamily]:
    return [
        ModelFamily(
            name=FAMILY,
            architectures=(ARCHITECTURE,),
            chat_templates={"idefics3": template_file(_PKG, "idefics3")},
            tiny_checkpoint=lazy_factory("vlkit_plugin_idefics3.checkpoints:tiny_idefics3"),
            description="Idefics3 / SmolVLM in transformers' format (HuggingFaceM4/Idefics3-8B-Llama3, "
                        "HuggingFaceTB/SmolVLM-Instruct): SigLIP tiles, pixel-shuffle connector, LLaMA",
        ),
    ]


def tie_word_embeddings(hf_config: dict[str, Any], weight_names: Any = None) -> bool:
    """Whether ``lm_head`` shares the text embeddings.

    transformers 5 ties ``Idefics3ForConditionalGeneration``'s head by the top-level
    ``tie_word_embeddings`` (``Idefics3Config`` defaults it to ``False``); a config without it
    falls back to ``text_config``'s (what transformers 4 read). A checkpoint that says "untied"
    but carries no ``lm_head.weight`` can only mean tied (transformers would leave a random
    head), so it is tied.
    """
    text = hf_config.get("text_config") or {}
    tie = bool(hf_config.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    if not tie and weight_names is not None and f"{LM_HEAD_PREFIX}weight" not in set(weight_names):
        tie = True
    return tie


@hookimpl
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """The LLaMA inside: ``text_config``, weights under ``model.text_model.`` and ``lm_head.``."""
    from vlkit.plugin import LanguageModelSpec, tensor_names

    text = dict(hf_config.get("text_config") or {})
    model_type = text.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"{model_path}: Idefics3 text_config model_type {model_type!r} is not supported (llama only)")
    archs = text.get("architectures") or []
    arch = archs[0] if archs else "LlamaForCausalLM"
    tie = tie_word_embeddings(hf_config)
    if not tie:  # only then read the weight names (a .bin checkpoint is read whole for them)
        tie = tie_word_embeddings(hf_config, tensor_names(model_path))
    text["tie_word_embeddings"] = tie
    return LanguageModelSpec(
        architecture=arch,
        config=text,
        model_path=str(model_path),
        weight_prefixes=((TEXT_PREFIX, "model."), (LM_HEAD_PREFIX, LM_HEAD_PREFIX)),
        exclude_prefixes=VISION_PREFIXES,
    )


@hookimpl
def vlkit_chat_template_wrapper(
    family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    from vlkit_plugin_idefics3.chat import Idefics3ChatTemplate

    return Idefics3ChatTemplate(family, hf_config, model_path, tokenizer, chat_template_config)


@hookimpl
def vlkit_vision_model(family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any) -> Any:
    from vlkit_plugin_idefics3.vision import Idefics3VisionModel

    return Idefics3VisionModel(family, hf_config, model_path, tokenizer)
