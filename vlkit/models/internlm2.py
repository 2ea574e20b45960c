"""InternLM2 decoder: the LLaMA computation under InternLM2's names and packed ``wqkv``.

Checkpoint names: ``model.tok_embeddings``, ``model.layers.N.attention.{wqkv,wo}``,
``feed_forward.{w1,w3,w2}``, ``attention_norm``, ``ffn_norm``, ``model.norm``, ``output``.
``wqkv`` is laid out per key/value group: for each kv head, ``num_heads // num_kv_heads``
query heads, then its key head, then its value head.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from vlkit.models.llama import LlamaForCausalLM

_RENAMES = (
    ("model.tok_embeddings.", "model.embed_tokens."),
    (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
    ("output.", "lm_head."),
)


class InternLM2ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping = {
        ".feed_forward.w1.": (".mlp.gate_up_proj.", 0),
        ".feed_forward.w3.": (".mlp.gate_up_proj.", 1),
    }

    def map_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, Any, torch.Tensor]]:
        if ".attention.wqkv." in name:
            pname = name.replace(".attention.wqkv.", ".self_attn.qkv_proj.")
            cfg = self.text_config
            groups = cfg.num_heads // cfg.num_kv_heads
            w = tensor.reshape(cfg.num_kv_heads, groups + 2, cfg.head_dim, *tensor.shape[1:])
            rest = tuple(tensor.shape[1:])
            yield pname, "q", w[:, :groups].reshape(cfg.num_heads * cfg.head_dim, *rest)
            yield pname, "k", w[:, groups].reshape(cfg.num_kv_heads * cfg.head_dim, *rest)
            yield pname, "v", w[:, groups + 1].reshape(cfg.num_kv_heads * cfg.head_dim, *rest)
            return
        for src, dst in _RENAMES:
            if name.startswith(src) or (src.startswith(".") and src in name):
                name = name.replace(src, dst, 1)
                break
        yield from super().map_weight(name, tensor)

    def checkpoint_name(self, param_name: str, shard_id: Any) -> str:
        if ".self_attn.qkv_proj." in param_name:
            return param_name.replace(".self_attn.qkv_proj.", ".attention.wqkv.")
        name = super().checkpoint_name(param_name, shard_id)
        for src, dst in _RENAMES:
            if name.startswith(dst) or (dst.startswith(".") and dst in name):
                return name.replace(dst, src, 1)
        return name
