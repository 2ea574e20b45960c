"""The language-backbone interface: what the engine calls on a model, and how to write one.

The engine builds one backbone per tensor-parallel rank from a
:class:`vlkit.models.spec.LanguageModelSpec`::

    with torch.device(device):          # parameters are created on the target device
        model = BackboneClass(spec.config)   # torch default dtype is the engine's dtype
    model.load_weights(iter_of_(name, full_tensor))   # names already mapped by spec.rename

and then, every step, with the tokens of all scheduled sequences packed into one flat batch of
``T`` tokens (no padding)::

    embeds = model.embed_tokens(input_ids)            # [T, hidden]; the engine then overwrites
                                                      # the rows of image tokens
    hidden = model(embeds, positions, ctx)            # [T, hidden]
    logits = model.compute_logits(hidden[rows])       # [N, vocab] on rank 0, None on others

Writing one (e.g. a plugin's ``QWenLMHeadModel``): subclass :class:`LanguageBackbone`, build
the layers from :mod:`vlkit.layers` (``QKVParallelLinear`` / ``RowParallelLinear`` /
``MergedColumnParallelLinear`` / ``VocabParallelEmbedding`` / ``ParallelLMHead``, ``RMSNorm``,
``RotaryEmbedding``) and call :func:`vlkit.layers.attention.paged_attention` with the layer's
index in every attention layer. Set ``num_layers``, ``num_kv_heads`` (per rank) and
``head_dim`` so the engine can size the KV cache, and either fill ``packed_modules_mapping`` or
override :meth:`LanguageBackbone.map_weight` to route checkpoint names to parameters.

Tensor parallelism: the parallel layers read the rank and world size from
:mod:`vlkit.layers.tp` when constructed and do their own all-reduce / gather in ``forward``,
so a backbone built from them needs no TP code of its own. ``num_kv_heads`` must be the number
of key/value heads *on this rank* (``QKVParallelLinear.num_kv_heads``). Register the class under
its HF architecture name through the ``vlkit_language_backbones`` plugin hook.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from vlkit.layers.attention import AttentionContext
from vlkit.layers.linear import default_weight_loader
from vlkit.layers.weights import WeightLoadError, WeightShapeError


class LanguageBackbone(nn.Module, ABC):
    """A decoder-only language model the engine can run over its paged KV cache.

    Args:
        config: the HF-style text config dict from the spec (``hidden_size``,
            ``num_attention_heads``, ``num_key_value_heads``, ``rope_*``, ``vocab_size``, ...).

    Attributes to set in ``__init__``:
        num_layers: attention layers (one KV cache tensor each, indexed by ``layer_idx``).
        num_kv_heads: key/value heads held by this rank.
        head_dim: size of one head.
        packed_modules_mapping: ``{checkpoint_part: (param_part, shard_id)}``, e.g.
            ``{"q_proj": ("qkv_proj", "q"), "gate_proj": ("gate_up_proj", 0)}``: a checkpoint
            tensor whose name contains ``checkpoint_part`` is loaded into the parameter named
            with ``param_part`` instead, as shard ``shard_id``.
    """

    packed_modules_mapping: dict[str, tuple[str, Any]] = {}

    num_layers: int
    num_kv_heads: int
    head_dim: int

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config

    @abstractmethod
    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[T, hidden]`` of ``input_ids`` ``[T]`` (all-reduced under TP)."""

    @abstractmethod
    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """Run the decoder on a flat batch.

        Args:
            inputs_embeds: ``[T, hidden]`` input embeddings (token embeddings with image
                embeddings already written in).
            positions: ``[T]`` position ids, or ``[3, T]`` for M-RoPE.
            ctx: the step's :class:`AttentionContext` (KV caches, slots, per-sequence layout);
                pass it with the layer index to ``paged_attention``.

        Returns:
            The final hidden states ``[T, hidden]`` after the last norm.
        """

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Logits ``[N, vocab]`` of ``hidden`` ``[N, hidden]``; under TP rank 0 gets them and
        other ranks get ``None``."""

    # -- weights ---------------------------------------------------------------------------

    def map_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, Any, torch.Tensor]]:
        """Route one checkpoint tensor to ``(param_name, shard_id, tensor)`` triples.

        The default applies :attr:`packed_modules_mapping`; override it for checkpoints whose
        layout differs more (InternLM2's packed ``wqkv``).
        """
        for part, (param_part, shard_id) in self.packed_modules_mapping.items():
            if part in name:
                yield name.replace(part, param_part), shard_id, tensor
                return
        yield name, None, tensor

    def checkpoint_name(self, param_name: str, shard_id: Any) -> str:
        """The checkpoint name a parameter shard comes from (for error messages)."""
        for part, (param_part, sid) in self.packed_modules_mapping.items():
            if sid == shard_id and param_part in param_name:
                return param_name.replace(param_part, part)
        return param_name if shard_id is None else f"{param_name}[{shard_id}]"

    def ignored_weight(self, name: str) -> bool:
        """Checkpoint tensors that are not parameters here (e.g. cached rotary tables)."""
        return name.endswith("rotary_emb.inv_freq")

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load full checkpoint tensors (this rank slices its part).

        Raises:
            WeightLoadError: some parameters got no tensor, or tensors had the wrong shape;
                the message names the first few with expected and actual shapes.
        """
        params = dict(self.named_parameters())
        loaded: set[tuple[str, Any]] = set()
        misshaped: list[tuple[str, tuple, tuple]] = []
        for name, tensor in weights:
            if self.ignored_weight(name):
                continue
            for pname, shard_id, t in self.map_weight(name, tensor):
                param = params.get(pname)
                if param is None:
                    continue
                loader = getattr(param, "weight_loader", default_weight_loader)
                try:
                    loader(param, t, shard_id)
                except WeightShapeError as e:
                    misshaped.append((name, e.expected, e.got))
                    continue
                if shard_id is None and hasattr(param, "shard_ids"):
                    loaded.update((pname, s) for s in param.shard_ids)
                else:
                    loaded.add((pname, shard_id))
        missing = []
        for pname, param in params.items():
            for sid in getattr(param, "shard_ids", (None,)):
                if (pname, sid) not in loaded:
                    missing.append((self.checkpoint_name(pname, sid), tuple(param.shape)))
        if missing or misshaped:
            raise WeightLoadError(type(self).__name__, missing, misshaped)
