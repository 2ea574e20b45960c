"""vlkit.plugin: the one module a plugin's run-time code imports.

Everything a model-family plugin needs at run time is here, and only what is here is public:
vlkit's other modules (``vlkit.contract``, ``vlkit.engine``, ``vlkit.models``...) are the
core's own and change without notice. A plugin's test-support code (tiny checkpoint
factories, references, tests) uses :mod:`vlkit.testing` besides.

Declaring a family (no torch import)
    :data:`hookimpl` (mark hook functions), :class:`ModelFamily`, :func:`template_file`,
    :func:`lazy_factory`, :class:`LanguageModelSpec` (what the language model is, where its
    weights are), :data:`IMAGE_TOKEN`.

Prompts
    :class:`ChatTemplateWrapper` (subclass it), :class:`PromptInputs` (what ``encode``
    returns), :class:`Conversation` (what it receives; :func:`to_conversation` builds one from
    what users pass), :class:`TemplateError`.

Vision
    :class:`VisionModel` (subclass it), :class:`ImageItem`, :func:`read_tensors` and
    :func:`tensor_names` (a checkpoint's tensors, safetensors or ``.bin``, sharded or not),
    :class:`WeightLoadError` (raise it when a checkpoint does not fit), the shared CLIP tower
    (:class:`CLIPTower`, :func:`clip_vision_config`, :func:`resolve_layers`,
    :func:`clip_activation`, :func:`resolve_tower`) and preprocessing steps
    (:func:`expand_to_square`, :func:`clip_image_processor`, :func:`crop_size`).

Language backbones (``vlkit_language_backbones``)
    :class:`LanguageBackbone` (the interface), :class:`LlamaForCausalLM` (the core's paged
    LLaMA, to subclass when only weight names differ), and the layers the core's backbones are
    built from, tensor-parallel without code of their own: :class:`QKVParallelLinear`,
    :class:`MergedColumnParallelLinear`, :class:`ColumnParallelLinear`,
    :class:`RowParallelLinear`, :class:`ReplicatedLinear`, :class:`VocabParallelEmbedding`,
    :class:`ParallelLMHead`, :class:`RMSNorm`, :class:`RotaryEmbedding`, :class:`SiluAndMul`,
    :func:`paged_attention` with its :class:`AttentionContext`.

Names load on first use, so ``from vlkit.plugin import hookimpl, ModelFamily`` in a hooks
module costs no torch import (``vlkit list-models`` stays fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlkit._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors; at run time names load lazily
    from vlkit.contract.chat import ChatTemplateWrapper, PromptInputs, TemplateError  # noqa: F401
    from vlkit.contract.family import ModelFamily, lazy_factory, template_file  # noqa: F401
    from vlkit.contract.hookspecs import hookimpl  # noqa: F401
    from vlkit.contract.messages import IMAGE_TOKEN, VIDEO_TOKEN, Conversation, to_conversation  # noqa: F401
    from vlkit.contract.vision import ImageItem, VisionModel  # noqa: F401
    from vlkit.engine.loader import read_tensors, tensor_names  # noqa: F401
    from vlkit.layers.activation import SiluAndMul  # noqa: F401
    from vlkit.layers.attention import AttentionContext, paged_attention  # noqa: F401
    from vlkit.layers.embedding import ParallelLMHead, VocabParallelEmbedding  # noqa: F401
    from vlkit.layers.linear import (  # noqa: F401
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        ReplicatedLinear,
        RowParallelLinear,
    )
    from vlkit.layers.norm import RMSNorm  # noqa: F401
    from vlkit.layers.rotary import RotaryEmbedding  # noqa: F401
    from vlkit.layers.weights import WeightLoadError  # noqa: F401
    from vlkit.models.base import LanguageBackbone  # noqa: F401
    from vlkit.models.llama import LlamaForCausalLM  # noqa: F401
    from vlkit.models.spec import LanguageModelSpec  # noqa: F401
    from vlkit.towers import resolve_tower  # noqa: F401
    from vlkit.towers.clip import CLIPTower, clip_activation, clip_vision_config, resolve_layers  # noqa: F401
    from vlkit.towers.preprocess import clip_image_processor, crop_size, expand_to_square  # noqa: F401

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "vlkit.contract.hookspecs": ("hookimpl",),
    "vlkit.contract.family": ("ModelFamily", "lazy_factory", "template_file"),
    "vlkit.contract.messages": ("IMAGE_TOKEN", "VIDEO_TOKEN", "Conversation", "to_conversation"),
    "vlkit.contract.chat": ("ChatTemplateWrapper", "PromptInputs", "TemplateError"),
    "vlkit.contract.vision": ("ImageItem", "VisionModel"),
    "vlkit.models.spec": ("LanguageModelSpec",),
    "vlkit.engine.loader": ("read_tensors", "tensor_names"),
    "vlkit.layers.weights": ("WeightLoadError",),
    "vlkit.towers": ("resolve_tower",),
    "vlkit.towers.clip": ("CLIPTower", "clip_activation", "clip_vision_config", "resolve_layers"),
    "vlkit.towers.preprocess": ("clip_image_processor", "crop_size", "expand_to_square"),
    "vlkit.models.base": ("LanguageBackbone",),
    "vlkit.models.llama": ("LlamaForCausalLM",),
    "vlkit.layers.linear": ("ColumnParallelLinear", "MergedColumnParallelLinear", "QKVParallelLinear",
                            "ReplicatedLinear", "RowParallelLinear"),
    "vlkit.layers.embedding": ("ParallelLMHead", "VocabParallelEmbedding"),
    "vlkit.layers.norm": ("RMSNorm",),
    "vlkit.layers.rotary": ("RotaryEmbedding",),
    "vlkit.layers.activation": ("SiluAndMul",),
    "vlkit.layers.attention": ("AttentionContext", "paged_attention"),
})
