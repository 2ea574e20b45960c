"""Rotary position embedding: plain, scaled (linear, dynamic NTK, llama3) and multimodal (M-RoPE).

:func:`rope_parameters` reads the RoPE settings from an HF config dict in any of its spellings
(transformers 5 ``rope_parameters``; 4.x ``rope_theta`` + ``rope_scaling`` with ``type`` or
``rope_type``). :class:`RotaryEmbedding` turns positions into ``(cos, sin)`` once per forward;
every attention layer then calls :func:`apply_rotary` (the HF ``rotate_half`` convention).

M-RoPE (Qwen2-VL): positions are ``[3, T]`` (temporal, height, width); the ``head_dim / 2``
frequencies are split into ``mrope_section`` chunks and chunk ``i`` takes its angle from axis
``i % 3``. With all three axes equal this is exactly 1-D RoPE.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """Normalise an HF config's RoPE settings to one dict with ``rope_type`` and ``rope_theta``."""
    params: dict[str, Any] = {}
    if isinstance(config.get("rope_parameters"), dict):
        params.update(config["rope_parameters"])
    if isinstance(config.get("rope_scaling"), dict):
        params.update(config["rope_scaling"])
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type == "mrope":
        rope_type = "default"
    params["rope_type"] = rope_type
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def _inv_freq(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    factor = p["factor"]
    low, high = p.get("low_freq_factor", 1.0), p.get("high_freq_factor", 4.0)
    old_ctx = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Positions -> ``(cos, sin)``, each ``[T, 1, head_dim / 2]`` in ``dtype``.

    Args:
        head_dim: size of one attention head (the whole head is rotated).
        config: the HF text config dict (RoPE settings and ``max_position_embeddings``).
        dtype: dtype of the returned tables (the model's).
    """

    def __init__(self, head_dim: int, config: dict[str, Any], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.head_dim = head_dim
        self.dtype = dtype
        p = rope_parameters(config)
        self.rope_type = p["rope_type"]
        self.base = float(p["rope_theta"])
        self.max_position_embeddings = int(config.get("max_position_embeddings", 2048))
        self.factor = float(p.get("factor", 1.0))
        section = p.get("mrope_section")
        self.mrope_section = list(section) if section else None
        inv = _inv_freq(head_dim, self.base)
        if self.rope_type == "linear":
            inv = inv / self.factor
        elif self.rope_type == "llama3":
            inv = _llama3_inv_freq(inv, p)
        elif self.rope_type not in ("default", "dynamic"):
            raise NotImplementedError(f"rope type {self.rope_type!r} is not supported")
        self.inv_freq = inv
        self._cos = self._sin = None
        self._build(max(self.max_position_embeddings, 4096))

    @property
    def dynamic(self) -> bool:
        return self.rope_type == "dynamic"

    def _build(self, n: int) -> None:
        t = torch.arange(n, dtype=torch.int64).float()
        freqs = t[:, None] * self.inv_freq[None, :]
        self._cos = freqs.cos().to(self.dtype)
        self._sin = freqs.sin().to(self.dtype)

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        need = int(positions.max()) + 1 if positions.numel() else 1
        if need > self._cos.shape[0]:
            self._build(max(need, 2 * self._cos.shape[0]))
        if self._cos.device != positions.device:
            self._cos, self._sin = self._cos.to(positions.device), self._sin.to(positions.device)
        return self._cos[positions], self._sin[positions]

    def _dynamic(self, positions: torch.Tensor, seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # HF recomputes the base from the current sequence length whenever it exceeds
        # max_position_embeddings; each token uses the length of its own sequence at this step.
        d = self.head_dim
        seq = torch.clamp(seq_lens.to(torch.float64), min=self.max_position_embeddings)
        base = self.base * ((self.factor * seq / self.max_position_embeddings) - (self.factor - 1)) ** (d / (d - 2))
        exps = torch.arange(0, d, 2, dtype=torch.int64).float().to(positions.device) / d
        inv = 1.0 / (base.float()[..., None] ** exps)
        freqs = positions.float()[..., None] * inv
        return freqs.cos().to(self.dtype), freqs.sin().to(self.dtype)

    def forward(self, positions: torch.Tensor, seq_lens: torch.Tensor | None = None):
        """``positions``: ``[T]`` or ``[3, T]`` (M-RoPE); ``seq_lens``: per-token sequence
        length, needed only by dynamic NTK scaling."""
        if positions.dim() == 2 and not self.mrope_section:
            positions = positions[0]
        if self.dynamic and seq_lens is not None:
            if positions.dim() == 2:
                seq_lens = seq_lens.expand(positions.shape[0], -1)
            cos, sin = self._dynamic(positions, seq_lens)
        else:
            cos, sin = self._tables(positions)
        if positions.dim() == 2:  # [3, T, D/2] -> [T, D/2], section i from axis i % 3
            cos = torch.cat([c[i % 3] for i, c in enumerate(cos.split(self.mrope_section, dim=-1))], dim=-1)
            sin = torch.cat([s[i % 3] for i, s in enumerate(sin.split(self.mrope_section, dim=-1))], dim=-1)
        return cos.unsqueeze(1), sin.unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, H, D]`` by ``cos``/``sin`` ``[T, 1, D/2]`` (first half / second half pairs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
