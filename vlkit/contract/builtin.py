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
def vlkit_tokenizer(family: ModelFamily, hf_config: dict[str, Any], model_path: Path,
                    trust_remote_code: bool) -> Any:
    """``transformers.AutoTokenizer`` on the checkpoint directory, never running (or asking to
    run) code shipped with the checkpoint unless ``trust_remote_code``. A tokenizer whose class is
    such code is read from its ``tokenizer.json`` when the checkpoint has one."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        if trust_remote_code or not _needs_remote_code(model_path):
            raise
        if (Path(model_path) / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(model_path))
        raise RemoteCodeRequired(
            f"{model_path}: its tokenizer is code shipped with the checkpoint (auto_map in "
            "tokenizer_config.json) and it has no tokenizer.json; vlkit does not run checkpoint code "
            "unless asked: pipeline(..., trust_remote_code=True) or --trust-remote-code"
        ) from exc


class RemoteCodeRequired(ValueError):
    """The checkpoint needs code it ships to be run, and the user did not allow it."""


def _needs_remote_code(model_path: Path) -> bool:
    import json

    path = Path(model_path) / "tokenizer_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(cfg.get("auto_map"))


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
    text["tie_word_embeddings"] = tied_embeddings(hf_config, text)
    return LanguageModelSpec(
        architecture=arch,
        config=text,
        model_path=str(model_path),
        weight_prefixes=TRANSFORMERS_LM_PREFIXES,
    )


#: where transformers' VLM checkpoints keep the language model, for every layout transformers
#: reads (first match wins, so the longer prefixes come first): ``model.language_model.model.*``
#: (saved by transformers 5.5), ``model.language_model.*`` (its module names since 4.52),
#: ``language_model.model.*`` (the hub's 4.x files, and what 5.25 saves), with the LM head under
#: ``language_model.lm_head.``, ``model.language_model.lm_head.`` or ``lm_head.``.
TRANSFORMERS_LM_PREFIXES = (
    ("model.language_model.model.", "model."),
    ("model.language_model.lm_head.", "lm_head."),
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
)


def tied_embeddings(hf_config: dict[str, Any], text: dict[str, Any]) -> bool:
    """Whether transformers ties this VLM's LM head to its input embeddings.

    transformers ties by the *composite* config's ``tie_word_embeddings`` (the class default when
    config.json leaves it out), not the text config's: a checkpoint saved by transformers 5 with
    ``tie_word_embeddings: true`` at the top, ``false`` in ``text_config`` and no ``lm_head``
    tensor is tied. The flag is read through transformers' own config class when it knows the
    ``model_type``, else from config.json (top level, then the text config).
    """
    model_type = hf_config.get("model_type")
    if model_type:
        try:
            import logging

            from transformers import AutoConfig

            quiet = logging.getLogger("transformers.configuration_utils")
            level, quiet.level = quiet.level, logging.ERROR
            try:
                cfg = AutoConfig.for_model(model_type, **{k: v for k, v in hf_config.items() if k != "model_type"})
            finally:
                quiet.setLevel(level)
            flag = getattr(cfg, "tie_word_embeddings", None)
            if isinstance(flag, bool):
                return flag
        except Exception:  # noqa: BLE001 - a model type transformers does not know: read the file
            pass
    if "tie_word_embeddings" in hf_config:
        return bool(hf_config["tie_word_embeddings"])
    return bool(text.get("tie_word_embeddings", False))


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
