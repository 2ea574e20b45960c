"""Qwen-VL-Chat's language model (``QWenLMHeadModel``, the first Qwen generation) as a vlkit backbone.

Same math as Qwen2 within ``seq_length`` tokens (RoPE with the rotate-half convention, RMSNorm,
SwiGLU, bias on the fused q/k/v only), under its own names:

=====================================  =========================================
checkpoint                             backbone
=====================================  =========================================
``transformer.wte``                    ``model.embed_tokens``
``transformer.h.N.ln_1``               ``model.layers.N.input_layernorm``
``transformer.h.N.attn.c_attn``        ``...self_attn.qkv_proj`` (``[q; k; v]`` rows, with bias)
``transformer.h.N.attn.c_proj``        ``...self_attn.o_proj`` (no bias)
``transformer.h.N.ln_2``               ``...post_attention_layernorm``
``transformer.h.N.mlp.w2`` / ``w1``    ``...mlp.gate_up_proj`` gate / up: ``c_proj(w1(x) * silu(w2(x)))``
``transformer.h.N.mlp.c_proj``         ``...mlp.down_proj``
``transformer.ln_f``                   ``model.norm``
``lm_head``                            ``lm_head``
=====================================  =========================================

Config: ``kv_channels`` is the head size, the MLP width is ``intermediate_size / 2``,
``rotary_emb_base`` the RoPE base, ``layer_norm_epsilon`` the RMSNorm epsilon. Qwen's dynamic
NTK scaling and log-n attention only act past ``seq_length`` (2048 for Qwen-VL-Chat); they are
not implemented, so the longest sequence is ``seq_length`` (the spec sets
``max_position_embeddings`` to it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch

from vlkit.plugin import LlamaForCausalLM


def llama_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Qwen (v1) config as the LLaMA-style dict vlkit's layers read."""
    if "num_key_value_heads" in config and "kv_channels" not in config:  # already converted
        return dict(config)
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("kv_channels") or hidden // heads)
    if float(config.get("rotary_pct", 1.0)) != 1.0:
        raise ValueError(f"QWenLMHeadModel with rotary_pct={config['rotary_pct']} (partial rotary) is not supported")
    seq = int(config.get("seq_length") or config.get("max_position_embeddings") or 2048)
    return {
        "hidden_size": hidden,
        "intermediate_size": int(config["intermediate_size"]) // 2,
        "num_hidden_layers": int(config["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": head_dim,
        "vocab_size": int(config["vocab_size"]),
        "rms_norm_eps": float(config.get("layer_norm_epsilon", 1e-6)),
        "rope_theta": float(config.get("rotary_emb_base", 10000.0)),
        "max_position_embeddings": seq,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
    }


_LAYER = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}


class QWenLMHeadModel(LlamaForCausalLM):
    """Qwen (v1) decoder, e.g. the language half of Qwen-VL-Chat."""

    qkv_bias = True
    o_bias = False

    def __init__(self, config: dict[str, Any]):
        super().__init__(llama_config(config))

    def map_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, Any, torch.Tensor]]:
        if name == "transformer.wte.weight":
            yield "model.embed_tokens.weight", None, tensor
            return
        if name == "transformer.ln_f.weight":
            yield "model.norm.weight", None, tensor
            return
        if name == "lm_head.weight":
            yield name, None, tensor
            return
        m = _LAYER.match(name)
        if m is None:
            return
        i, rest = m.group(1), m.group(2)
        p = f"model.layers.{i}."
        if rest in _LAYER_NAMES:
            yield p + _LAYER_NAMES[rest], None, tensor
        elif rest.startswith("attn.c_attn."):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = tensor.chunk(3, dim=0)
            for sid, part in zip("qkv", (q, k, v)):
                yield f"{p}self_attn.qkv_proj.{kind}", sid, part
        elif rest == "mlp.w2.weight":  # the gate: silu(w2(x))
            yield p + "mlp.gate_up_proj.weight", 0, tensor
        elif rest == "mlp.w1.weight":
            yield p + "mlp.gate_up_proj.weight", 1, tensor

    def checkpoint_name(self, param_name: str, shard_id: Any) -> str:
        m = re.match(r"^model\.layers\.(\d+)\.(.+)$", param_name)
        if param_name == "model.embed_tokens.weight":
            return "transformer.wte.weight"
        if param_name == "model.norm.weight":
            return "transformer.ln_f.weight"
        if m is None:
            return param_name
        i, rest = m.groups()
        for src, dst in _LAYER_NAMES.items():
            if rest == dst:
                return f"transformer.h.{i}.{src}"
        if rest.startswith("self_attn.qkv_proj."):
            return f"transformer.h.{i}.attn.c_attn.{rest.rsplit('.', 1)[1]}[{shard_id}]"
        if rest == "mlp.gate_up_proj.weight":
            return f"transformer.h.{i}.mlp.{'w2' if shard_id == 0 else 'w1'}.weight"
        return param_name
