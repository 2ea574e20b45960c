"""The core's own hook implementations: the fallbacks every family gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.hookspecs import hookimpl

_TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")


@hookimpl(trylast=True)
def vlkit_language_model_spec(family: Any, hf_config: dict[str, Any], model_path: Path) -> Any:
    """Transformers' VLM layout: a nested text config and ``language_model`` weight prefixes."""
    from vlkit.models.spec import LanguageModelSpec

    text = next((hf_config[k] for k in _TEXT_CONFIG_KEYS if isinstance(hf_config.get(k), dict)), None)
    if text is None:
        return None
    text = dict(text)
    archs = text.get("architectures") or []
    arch = archs[0] if archs else _arch_from_model_type(text.get("model_type", "llama"))
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


def _arch_from_model_type(model_type: str) -> str:
    return {
        "llama": "LlamaForCausalLM",
        "qwen2": "Qwen2ForCausalLM",
        "internlm2": "InternLM2ForCausalLM",
        "mistral": "LlamaForCausalLM",
        "vicuna": "LlamaForCausalLM",
    }.get(model_type, "LlamaForCausalLM")
