"""Rotary position embedding: plain, scaled (linear, dynamic NTK, llama3, LongRoPE) and multimodal (M-RoPE).

:func:`rope_parameters` reads the RoPE settings from an HF config dict in any of its spellings
(transformers 5 ``rope_parameters``; 4.x ``rope_theta`` + ``rope_scaling`` with ``type`` or
``rope_type``). :class:`RotaryEmbedding` turns positions into ``(cos, sin)`` once per forward;
every attention layer then calls :func:`apply_rotary` (the HF ``rotate_half`` convention).

M-RoPE (Qwen2-VL): positions are ``[3, T]`` (temporal, height, width); the ``head_dim / 2``
frequencies are split into ``mrope_section`` chunks and chunk ``i`` takes its angle from axis
``i % 3``. With all three axes equal this is exactly 1-D RoPE.

LongRoPE (Phi-3 128k, ``rope_type`` ``longrope``, or ``su`` as older configs say): per-frequency
``short_factor`` divisors while a sequence is at most ``original_max_position_embeddings`` long,
``long_factor`` ones beyond, and cos/sin scaled by ``attention_factor`` (by default
``sqrt(1 + ln(factor) / ln(original_max))`` with ``factor = max_position_embeddings /
original_max``). The choice follows the whole sequence's length (``seq_lens``), so a prefill
in chunks uses one set of factors throughout; the engine recomputes a sequence that grows past
``original_max`` while generating, as transformers' Phi-3 drops its cache at that point.
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
    if rope_type == "su":  # Phi-3's first name for LongRoPE
        rope_type = "longrope"
    params["rope_type"] = rope_type
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if "original_max_position_embeddings" not in params and "original_max_position_embeddings" in config:
        params["original_max_position_embeddings"] = config["original_max_position_embeddings"]
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


def _longrope(head_dim: int, base: float, p: dict[str, Any], max_pos: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(short inverse frequencies, long ones, attention factor) of LongRoPE."""
    missing = [k for k in ("short_factor", "long_factor", "original_max_position_embeddings") if not p.get(k)]
    if missing:
        raise ValueError(f"longrope rope scaling needs {', '.join(missing)} in config.json")
    original = int(p["original_max_position_embeddings"])
    factor = p.get("factor") or max_pos / original
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    exps = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    short, long = (torch.tensor(p[k], dtype=torch.float32) for k in ("short_factor", "long_factor"))
    if short.numel() != head_dim // 2 or long.numel() != head_dim // 2:
        raise ValueError(f"longrope short_factor/long_factor need head_dim / 2 = {head_dim // 2} values each, "
                         f"got {short.numel()} and {long.numel()}")
    return 1.0 / (short * base**exps), 1.0 / (long * base**exps), float(attention)


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
        self.factor = float(p.get("factor") or 1.0)
        section = p.get("mrope_section")
        self.mrope_section = list(section) if section else None
        inv = _inv_freq(head_dim, self.base)
        if self.rope_type == "linear":
            inv = inv / self.factor
        elif self.rope_type == "llama3":
            inv = _llama3_inv_freq(inv, p)
        partial = float(p.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)
        if partial != 1.0:
            raise NotImplementedError(f"partial_rotary_factor {partial} is not supported (only whole-head RoPE)")
        self.attention_factor = 1.0
        self.long_inv_freq: torch.Tensor | None = None
        self.original_max = int(p.get("original_max_position_embeddings") or self.max_position_embeddings)
        if self.rope_type == "longrope":
            inv, self.long_inv_freq, self.attention_factor = _longrope(head_dim, self.base, p,
                                                                       self.max_position_embeddings)
        elif self.rope_type not in ("default", "dynamic", "linear", "llama3"):
            raise NotImplementedError(f"rope type {self.rope_type!r} is not supported")
        self.inv_freq = inv
        self._cos = self._sin = None
        self._long: tuple[torch.Tensor, torch.Tensor] | None = None
        self._build(max(self.max_position_embeddings, 4096))

    @property
    def dynamic(self) -> bool:
        return self.rope_type == "dynamic"

    @property
    def needs_seq_lens(self) -> bool:
        """Whether :meth:`forward` needs each token's sequence length (dynamic NTK, LongRoPE)."""
        return self.rope_type in ("dynamic", "longrope")

    def _table(self, inv_freq: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = torch.arange(n, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
        return (freqs.cos() * self.attention_factor).to(self.dtype), (freqs.sin() * self.attention_factor).to(self.dtype)

    def _build(self, n: int) -> None:
        self._cos, self._sin = self._table(self.inv_freq, n)
        if self.long_inv_freq is not None:
            self._long = self._table(self.long_inv_freq, n)

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # inside a CUDA graph capture nothing may sync with the host: the tables were built up
        # to the longest sequence before capture (vlkit.engine.cuda_graph)
        capturing = positions.is_cuda and torch.cuda.is_current_stream_capturing()
        need = int(positions.max()) + 1 if positions.numel() and not capturing else 1
        if need > self._cos.shape[0]:
            self._build(max(need, 2 * self._cos.shape[0]))
        if self._cos.device != positions.device:
            self._cos, self._sin = self._cos.to(positions.device), self._sin.to(positions.device)
            if self._long is not None:
                self._long = (self._long[0].to(positions.device), self._long[1].to(positions.device))
        return self._cos[positions], self._sin[positions]

    def _longrope(self, positions: torch.Tensor, seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._tables(positions)
        long = seq_lens > self.original_max
        if positions.dim() == 2:
            long = long.expand(positions.shape[0], -1)
        if bool(long.any()):
            lc, ls = self._long[0][positions], self._long[1][positions]
            cos, sin = torch.where(long[..., None], lc, cos), torch.where(long[..., None], ls, sin)
        return cos, sin

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
        length, needed only by dynamic NTK scaling and LongRoPE (:attr:`needs_seq_lens`)."""
        if positions.dim() == 2 and not self.mrope_section:
            positions = positions[0]
        if self.dynamic and seq_lens is not None:
            if positions.dim() == 2:
                seq_lens = seq_lens.expand(positions.shape[0], -1)
            cos, sin = self._dynamic(positions, seq_lens)
        elif self._long is not None and seq_lens is not None:
            cos, sin = self._longrope(positions, seq_lens)
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
