"""Attention over the paged KV cache.

The engine packs the tokens of every scheduled sequence into one flat batch of ``T`` tokens
(no padding). Sequences that contribute a single token this step (decodes, and one-token
prefill chunks) come first; their attention runs as one batched SDPA over their gathered KV
blocks with a length mask. The runner keeps those gathered keys/values between steps
(:attr:`AttentionContext.decode_kv`): while the same sequences keep decoding, each step only
appends its new token to them instead of gathering every block again. Each longer prefill chunk then runs its own SDPA: causal over the
chunk, plus everything already in the cache for that sequence.

KV cache layout, one tensor per layer: ``[2, num_blocks, block_size, num_kv_heads, head_dim]``
(``[0]`` keys, ``[1]`` values); token ``p`` of a sequence lives in slot
``block_table[p // block_size] * block_size + p % block_size``.

Decode backends (:attr:`AttentionContext.backend`, chosen once by :func:`resolve_backend`):

- ``"sdpa"``: the gathered-KV SDPA path above (CPU, and anywhere else as the fallback);
- ``"triton"``: :func:`vlkit.kernels.paged_decode.paged_decode_attention`, a Triton kernel that
  reads the blocks in place (any ``block_size``, GQA-aware, one launch per layer whatever the
  context lengths, so it can be captured in a CUDA graph); the default on CUDA;
- ``"flash-attn"``: ``flash_attn_with_kvcache`` / ``flash_attn_varlen_func`` where flash-attn is
  installed and ``block_size`` is a multiple of 256 (its paged kernel needs that).

Prefill chunks always run through SDPA (on CUDA its flash / memory-efficient kernels), except
under ``"flash-attn"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vlkit.config import ATTENTION_BACKENDS
from vlkit.kernels import paged_decode

try:  # optional CUDA kernels
    from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache  # type: ignore
except Exception:  # pragma: no cover - not installed on CPU machines
    flash_attn_varlen_func = flash_attn_with_kvcache = None


@dataclass
class PrefillChunk:
    """One sequence's multi-token chunk inside the flat batch."""

    start: int  # first token of the chunk in the flat batch
    length: int  # tokens in the chunk
    context_len: int  # tokens of the sequence in the cache after this step (cached + chunk)
    block_table: torch.Tensor  # [num_blocks_of_seq] int64
    mask: torch.Tensor | None = None  # [length, context_len] bool when part of the context was cached


@dataclass
class AttentionContext:
    """Everything attention layers need for one forward, built once per step by the runner.

    Attributes:
        kv_caches: one ``[2, num_blocks, block_size, kv_heads, head_dim]`` tensor per layer.
        slot_mapping: ``[T]`` cache slot of every token in the flat batch.
        num_single: how many leading tokens are one-token sequences (decodes).
        single_block_tables: ``[num_single, max_blocks]`` (padded with block 0).
        single_mask: ``[num_single, 1, 1, W]`` True where the key exists (bool), or the same as
            an additive float mask (0 / -inf); ``W`` is ``max_blocks * block_size``, or the
            longest context of the step with ``decode_kv``.
        single_context_lens: ``[num_single]`` int32 (for flash-attn).
        prefills: the multi-token chunks, in flat-batch order after the single tokens.
        seq_lens: ``[T]`` length of each token's sequence after this step (dynamic NTK RoPE and LongRoPE only).
        workspace: scratch buffer for the gathered decode KV, reused across layers.
        decode_kv: optional per-layer ``[2, num_single, kv_heads, cap, head_dim]`` buffers that
            hold the single-token sequences' keys/values contiguously (row ``i`` = sequence
            ``i``, positions ``0..cap``, everything past a row's length finite and masked).
            With ``decode_rebuild`` every layer first refills its buffer from the cache
            (``decode_block_tables`` ``[num_single, cap // block_size]``); otherwise it only
            writes this step's keys/values at ``decode_write_idx`` ``[num_single * kv_heads]``
            (``(row * kv_heads + head) * cap + position``). Attention then reads the first ``decode_width`` positions.
    """

    kv_caches: list[torch.Tensor]
    slot_mapping: torch.Tensor
    num_single: int = 0
    single_block_tables: torch.Tensor | None = None
    single_mask: torch.Tensor | None = None
    single_context_lens: torch.Tensor | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)
    seq_lens: torch.Tensor | None = None
    workspace: torch.Tensor | None = None  # gather buffer shared by the layers of one step
    decode_kv: list[torch.Tensor] | None = None
    decode_rebuild: bool = True
    decode_block_tables: torch.Tensor | None = None
    decode_write_idx: torch.Tensor | None = None
    decode_width: int = 0
    backend: str = "sdpa"


def resolve_backend(name: str, device: torch.device, block_size: int) -> str:
    """The decode backend ``name`` (one of :data:`ATTENTION_BACKENDS`) means on ``device``.

    ``"auto"`` is flash-attn on CUDA where it is installed and ``block_size % 256 == 0``, else
    Triton on CUDA where it is installed, else SDPA. Asking for a backend that cannot run here
    raises ``ValueError`` naming what is missing. ``"triton"`` on CPU runs Triton's interpreter
    (tests only; it needs ``TRITON_INTERPRET=1``).
    """
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}")
    cuda = device.type == "cuda"
    flash_ok = flash_attn_with_kvcache is not None and cuda and block_size % 256 == 0
    if name == "auto":
        if flash_ok:
            return "flash-attn"
        return "triton" if cuda and paged_decode.available() else "sdpa"
    if name == "flash-attn" and not flash_ok:
        raise ValueError("attention backend 'flash-attn' needs flash_attn installed, a CUDA device and a "
                         f"block_size that is a multiple of 256 (got {block_size})")
    if name == "triton" and not paged_decode.available():
        raise ValueError("attention backend 'triton' needs triton installed (pip install triton)")
    return name


def write_kv(cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Store this step's keys/values ``[T, kv_heads, head_dim]`` at their slots."""
    flat = cache.view(2, -1, cache.shape[-2], cache.shape[-1])
    flat[0].index_copy_(0, slots, k)
    flat[1].index_copy_(0, slots, v)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: AttentionContext,
    layer_idx: int,
    scale: float,
) -> torch.Tensor:
    """Attention of ``q`` ``[T, heads, D]`` over the cache, after storing ``k``, ``v`` ``[T, kv_heads, D]``.

    Returns ``[T, heads, D]``. Grouped-query attention is handled (``heads`` a multiple of
    ``kv_heads``).
    """
    cache = ctx.kv_caches[layer_idx]
    write_kv(cache, ctx.slot_mapping, k, v)
    if ctx.backend == "flash-attn":
        return _flash_attention(q, k, v, ctx, cache, scale)
    out = torch.empty_like(q)
    n = ctx.num_single
    if n and ctx.backend == "triton":
        paged_decode.paged_decode_attention(q[:n], cache, ctx.single_block_tables, ctx.single_context_lens,
                                            scale, out=out[:n])
    elif n and ctx.decode_kv is not None:
        buf = ctx.decode_kv[layer_idx]  # [2, n, kvh, cap, D]
        kvh, d = buf.shape[2], buf.shape[4]
        if ctx.decode_rebuild:
            blocks = cache.index_select(1, ctx.decode_block_tables.flatten())  # [2, n * cap / bs, bs, kvh, D]
            buf.copy_(blocks.view(2, n, -1, kvh, d).transpose(2, 3))
        else:  # the rows already hold every earlier token: append this step's
            flat = buf.view(2, -1, d)
            flat[0].index_copy_(0, ctx.decode_write_idx, k[:n].reshape(-1, d))
            flat[1].index_copy_(0, ctx.decode_write_idx, v[:n].reshape(-1, d))
        kv = buf[:, :, :, : ctx.decode_width]  # [2, n, kvh, W, D], each head's keys contiguous
        # the query heads sharing a KV head go in as that head's query positions: its keys and
        # values are read once for all of them
        o = F.scaled_dot_product_attention(
            q[:n].reshape(n, kvh, -1, d), kv[0], kv[1], attn_mask=ctx.single_mask, scale=scale
        )
        out[:n] = o.reshape(n, -1, d)
    elif n:
        # index_select is ~10x faster than advanced indexing on CPU; the output buffer is reused
        # by every layer of the step (a fresh 1-2 MB allocation per layer costs page faults)
        idx = ctx.single_block_tables.flatten()
        shape = (2, idx.numel()) + tuple(cache.shape[2:])
        buf = ctx.workspace
        if buf is None or buf.shape != shape or buf.dtype != cache.dtype:
            buf = ctx.workspace = torch.empty(shape, dtype=cache.dtype, device=cache.device)
        kv = torch.index_select(cache, 1, idx, out=buf)  # [2, n * max_blocks, bs, kvh, D]
        kv = kv.view(2, n, -1, cache.shape[-2], cache.shape[-1]).transpose(2, 3)  # [2, n, kvh, L, D]
        o = F.scaled_dot_product_attention(
            q[:n].unsqueeze(2), kv[0], kv[1], attn_mask=ctx.single_mask, scale=scale, enable_gqa=True
        )
        out[:n] = o.squeeze(2)
    for c in ctx.prefills:
        # 4-D inputs: on CPU, 3-D ones (or 4-D with a repeated KV) fall back to the unfused math
        # kernel, 2-3x slower
        s, e = c.start, c.start + c.length
        qs = q[None, s:e].transpose(1, 2)  # [1, heads, L, D]
        if c.mask is None:  # nothing cached before this chunk: attend to the chunk itself
            ks, vs = k[None, s:e].transpose(1, 2), v[None, s:e].transpose(1, 2)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
        else:
            kv = cache.index_select(1, c.block_table).flatten(1, 2)[:, None, : c.context_len].transpose(2, 3)
            o = F.scaled_dot_product_attention(qs, kv[0], kv[1], attn_mask=c.mask, scale=scale, enable_gqa=True)
        out[s:e] = o[0].transpose(0, 1)
    return out


def _flash_attention(q, k, v, ctx: AttentionContext, cache: torch.Tensor, scale: float) -> torch.Tensor:
    # pragma: no cover - needs CUDA + flash_attn
    out = torch.empty_like(q)
    n = ctx.num_single
    if n:
        o = flash_attn_with_kvcache(
            q[:n].unsqueeze(1),
            cache[0],
            cache[1],
            cache_seqlens=ctx.single_context_lens,
            block_table=ctx.single_block_tables.to(torch.int32),
            softmax_scale=scale,
            causal=True,
        )
        out[:n] = o.squeeze(1)
    for c in ctx.prefills:
        s, e = c.start, c.start + c.length
        if c.mask is None:
            ks, vs = k[s:e], v[s:e]
        else:
            kv = cache.index_select(1, c.block_table).flatten(1, 2)[:, : c.context_len]
            ks, vs = kv[0], kv[1]
        cu_q = torch.tensor([0, c.length], dtype=torch.int32, device=q.device)
        cu_k = torch.tensor([0, ks.shape[0]], dtype=torch.int32, device=q.device)
        out[s:e] = flash_attn_varlen_func(
            q[s:e], ks, vs, cu_q, cu_k, c.length, ks.shape[0], softmax_scale=scale, causal=True
        )
    return out
