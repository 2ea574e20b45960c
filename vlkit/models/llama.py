"""LLaMA-style decoder (also Mistral-style and the base of Qwen2 and InternLM2).

Grouped-query attention with RoPE (any scaling :mod:`vlkit.layers.rotary` supports), RMSNorm,
SwiGLU MLP; HF parameter names (``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``, ``model.norm``,
``lm_head``), with q/k/v fused into ``qkv_proj`` and gate/up into ``gate_up_proj`` at load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlkit.layers.activation import SiluAndMul
from vlkit.layers.attention import AttentionContext, paged_attention
from vlkit.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from vlkit.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vlkit.layers.norm import RMSNorm
from vlkit.layers.rotary import RotaryEmbedding, apply_rotary
from vlkit.models.base import LanguageBackbone
from vlkit.models.text_config import TextConfig


class LlamaAttention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int, qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.layer_idx = layer_idx
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, qkv_bias)
        self.o_proj = RowParallelLinear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, o_bias)
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5

    def forward(self, x: torch.Tensor, cos, sin, ctx: AttentionContext) -> torch.Tensor:
        t, h, kvh, d = x.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)
        # q and k sit next to each other: rotate both with one call.
        qk = apply_rotary(qkv[:, : (h + kvh) * d].view(t, h + kvh, d), cos, sin)
        q, k = qk.split([h, kvh], dim=1)
        v = qkv[:, (h + kvh) * d :].view(t, kvh, d)
        o = paged_attention(q, k, v, ctx, self.layer_idx, self.scale)
        return self.o_proj(o.reshape(t, h * d))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            cfg.hidden_size, [cfg.intermediate_size] * 2, bias=cfg.mlp_bias
        )
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int, qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx, qkv_bias, o_bias)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, residual, cos, sin, ctx):
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos, sin, ctx)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: TextConfig, config: dict[str, Any], qkv_bias: bool, o_bias: bool):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i, qkv_bias, o_bias) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, config, dtype=torch.get_default_dtype())

    def forward(self, x: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        cos, sin = self.rotary_emb(positions, ctx.seq_lens)
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, cos, sin, ctx)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(LanguageBackbone):
    """HF ``LlamaForCausalLM`` checkpoints (and ``MistralForCausalLM`` without sliding window)."""

    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    qkv_bias: bool | None = None  # None: from config["attention_bias"]
    o_bias: bool | None = None

    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        cfg = TextConfig.from_dict(config)
        self.text_config = cfg
        qkv_bias = cfg.attention_bias if self.qkv_bias is None else self.qkv_bias
        o_bias = cfg.attention_bias if self.o_bias is None else self.o_bias
        self.model = LlamaModel(cfg, config, qkv_bias, o_bias)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        attn = self.model.layers[0].self_attn
        self.num_layers = cfg.num_layers
        self.num_kv_heads = attn.num_kv_heads
        self.head_dim = cfg.head_dim

    def ignored_weight(self, name: str) -> bool:
        """With tied embeddings the LM head *is* the input embedding: a checkpoint's own
        ``lm_head.weight`` is not loaded over it (transformers ties after loading, too)."""
        return super().ignored_weight(name) or (self.text_config.tie_word_embeddings and name == "lm_head.weight")

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        return self.model(inputs_embeds, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.lm_head(hidden)
