"""Architecture name -> backbone class, and config ``model_type`` -> architecture (one table each)."""

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
    "vicuna": "LlamaForCausalLM",
}


def supported_architectures() -> list[str]:
    """Architectures the core's backbones serve (plugins add theirs through the registry)."""
    return sorted(BUILTIN_BACKBONES)


def get_backbone_class(architecture: str, backbone: str = "") -> type:
    """The backbone class for ``architecture``: the core's, else ``backbone`` (``"module:Class"``,
    what the registry records in :attr:`LanguageModelSpec.backbone` for a plugin's backbone).
    Core backbones win a name clash."""
    target = BUILTIN_BACKBONES.get(architecture) or backbone
    if not target:
        raise ValueError(
            f"no language backbone for architecture {architecture!r}; the core has "
            f"{', '.join(supported_architectures())} (a plugin adds others with vlkit_language_backbones)"
        )
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
