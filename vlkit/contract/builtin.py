"""The core's own plugin: the fallbacks every family gets, and the built-in text family.

Registered by the registry under :data:`PLUGIN_NAME`. Each hook here is ``trylast``: it runs
only when the family's owner answered ``None`` (or does not implement the hook). A plain text
checkpoint belongs to :data:`TEXT_FAMILY`, which no plugin owns, so these hooks alone build it:
the pipeline has one construction path for text and vision-language checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.contract.family import ModelFamily
from vlkit.contract.hookspecs import hookimpl

PLUGIN_NAME = "vlkit.builtin"

#: Plain text checkpoints served by a language backbone (the core's or a plugin's). Not listed by
#: ``vlkit list-models``: the registry matches it only when no plugin family claims a checkpoint.
TEXT_FAMILY = ModelFamily(
    name="text",
    architectures=(),
    description="plain text checkpoints of a language backbone",
    plugin=PLUGIN_NAME,
)

_TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")


@hookimpl(trylast=True)
def vlkit_tokenizer(family: ModelFamily, hf_config: dict[str, Any], model_path: Path) -> Any:
    """``transformers.AutoTokenizer`` on the checkpoint directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))


@hookimpl(trylast=True)
def vlkit_language_model_spec(family: ModelFamily, hf_config: dict[str, Any], model_path: Path) -> Any:
    """Transformers' VLM layout (a nested text config, ``language_model`` weight prefixes), or a
    plain text checkpoint whose ``architectures`` name a backbone."""
    from vlkit.models.backbones import MODEL_TYPES
    from vlkit.models.spec import LanguageModelSpec

    text = next((hf_config[k] for k in _TEXT_CONFIG_KEYS if isinstance(hf_config.get(k), dict)), None)
    if text is None:
        if family is not TEXT_FAMILY:
            return None
        from vlkit.engine.loader import text_model_spec

        return text_model_spec(str(model_path))
    text = dict(text)
    archs = text.get("architectures") or []
    arch = archs[0] if archs else MODEL_TYPES.get(text.get("model_type", "llama"), "LlamaForCausalLM")
    if "tie_word_embeddings" not in text and "tie_word_embeddings" in hf_config:
        text["tie_word_embeddings"] = hf_config["tie_word_embeddings"]
    return LanguageModelSpec(
        architecture=arch,
        config=text,
        model_path=str(model_path),
        weight_prefixes=(
            ("model.language_model.", "model."),  # transformers >= 4.52
            ("language_model.model.", "model."),  # older transformers
            ("language_model.lm_head.", "lm_head."),
            ("lm_head.", "lm_head."),
        ),
    )


@hookimpl(trylast=True)
def vlkit_chat_template_wrapper(
    family: ModelFamily, hf_config: dict[str, Any], model_path: Path, tokenizer: Any, chat_template_config: Any
) -> Any:
    """The generic :class:`~vlkit.contract.chat.ChatTemplateWrapper` on the chosen template or the
    checkpoint's own; ``None`` when there is neither (a text checkpoint then takes raw prompts)."""
    from vlkit.contract.chat import ChatTemplateWrapper, TemplateError, checkpoint_template

    cfg = chat_template_config
    chosen = bool(cfg.model_name or cfg.chat_template)
    if not chosen and checkpoint_template(model_path) is None and not family.chat_templates:
        return None
    try:
        return ChatTemplateWrapper(family, hf_config, model_path, tokenizer, cfg)
    except TemplateError:
        if chosen:
            raise
        return None
