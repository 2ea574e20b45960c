"""Architecture name -> backbone class: the built-in table merged with plugins' backbones."""

from __future__ import annotations

import importlib

# Built-ins, imported lazily ("module:Class").
BUILTIN_BACKBONES: dict[str, str] = {
    "LlamaForCausalLM": "vlkit.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "vlkit.models.llama:LlamaForCausalLM",
    "Qwen2ForCausalLM": "vlkit.models.qwen2:Qwen2ForCausalLM",
    "InternLM2ForCausalLM": "vlkit.models.internlm2:InternLM2ForCausalLM",
    "Phi3ForCausalLM": "vlkit.models.phi3:Phi3ForCausalLM",
}

# config.json "model_type" -> architecture, for checkpoints without "architectures".
MODEL_TYPES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "internlm2": "InternLM2ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


def _plugin_backbones() -> dict[str, type]:
    try:
        from vlkit.registry import language_backbones

        extra = language_backbones()
        return dict(extra) if extra else {}
    except Exception:
        return {}


def supported_architectures() -> list[str]:
    return sorted(set(BUILTIN_BACKBONES) | set(_plugin_backbones()))


def get_backbone_class(architecture: str) -> type:
    """The backbone class for ``architecture`` (built-ins win over plugins on a name clash)."""
    target = BUILTIN_BACKBONES.get(architecture)
    if target is not None:
        module, cls = target.split(":")
        return getattr(importlib.import_module(module), cls)
    extra = _plugin_backbones()
    if architecture in extra:
        return extra[architecture]
    raise ValueError(
        f"no language backbone for architecture {architecture!r}; "
        f"known: {', '.join(supported_architectures())}"
    )
