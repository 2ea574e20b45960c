"""What a family tells the engine about its language model.

A :class:`LanguageModelSpec` is plain, picklable data: tensor-parallel workers rebuild the
backbone from it in their own process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LanguageModelSpec:
    """The language half of a checkpoint.

    Args:
        architecture: backbone key, e.g. ``"LlamaForCausalLM"``, ``"Qwen2ForCausalLM"``,
            ``"InternLM2ForCausalLM"``, or one a plugin registers through
            ``vlkit_language_backbones``.
        config: the HF-style text config as a dict (``hidden_size``, ``num_attention_heads``,
            ``num_key_value_heads``, ``rms_norm_eps``, ``rope_theta``, ``rope_scaling``,
            ``vocab_size``, ``tie_word_embeddings``...).
        model_path: local directory holding the weight files (safetensors, sharded or not,
            or ``.bin``).
        weight_prefixes: ``(checkpoint_prefix, backbone_prefix)`` pairs tried in order; a
            tensor whose name starts with ``checkpoint_prefix`` is renamed by swapping the
            prefix, and tensors matching no pair are ignored (vision tower, projector...). The
            default keeps every name as is.
        exclude_prefixes: names starting with one of these are ignored even if a pair matches.
        backbone: ``"module:Class"`` of a plugin's backbone for ``architecture`` (set by the
            registry from ``vlkit_language_backbones``; empty for the core's backbones).
    """

    architecture: str
    config: dict[str, Any]
    model_path: str
    weight_prefixes: tuple[tuple[str, str], ...] = (("", ""),)
    exclude_prefixes: tuple[str, ...] = field(default_factory=tuple)
    backbone: str = ""

    def rename(self, name: str) -> str | None:
        """Map a checkpoint tensor name to the backbone's name, or ``None`` to skip it."""
        if any(name.startswith(p) for p in self.exclude_prefixes):
            return None
        for src, dst in self.weight_prefixes:
            if name.startswith(src):
                return dst + name[len(src):]
        return None
