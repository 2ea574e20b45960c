"""Paged decode attention as a Triton kernel: one query token per sequence over its block table.

GPU machines without flash-attn still need decode attention that reads the paged KV cache in
place: gathering every sequence's blocks into a contiguous buffer and calling SDPA (the CPU
path in :mod:`vlkit.layers.attention`) costs a copy of the whole context per layer and a
launch per operation, and its shapes change every step, so it cannot be captured in a CUDA
graph. This kernel has none of that:

- one program per (sequence, KV head); the ``group = heads // kv_heads`` query heads that share
  a KV head are computed together, so each key/value is read from memory once (GQA-aware);
- it walks the sequence's context ``BLOCK_N`` tokens at a time, turning each position into its
  cache slot through the block table (``block_table[p // block_size] * block_size + p %
  block_size``), so any ``block_size`` works, powers of two or not;
- softmax is online (running max and sum, fp32), and the output is written once;
- the context length is read on the device, so a launch does not depend on it: the same
  launch replays inside a CUDA graph for any context lengths of that batch size.

Where Triton is missing :func:`available` is False and the engine uses SDPA. On CPU tensors
the kernel runs in Triton's interpreter (numpy; ``TRITON_INTERPRET=1`` must be set before
triton is imported, as ``tests/conftest.py`` does on machines without CUDA), which is how the
CPU test suite checks it against SDPA and the engine; that is for tests only, far too slow to
serve.
"""

import functools
import importlib.util
import os
from typing import Any

import torch


def available() -> bool:
    """Whether Triton is installed (the kernel then runs on CUDA, or interpreted on CPU). Triton
    itself is imported at the first launch, not with vlkit."""
    return _triton_spec() is not None


@functools.cache
def _triton_spec() -> Any:
    return importlib.util.find_spec("triton")


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


tl: Any = None  # triton.language, bound at the first launch (the kernel reads it as a global)


@functools.cache
def _kernel() -> Any:
    global tl
    import triton
    import triton.language

    tl = triton.language

    def _kernel_source(
        q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, out_ptr, scale,
        stride_qt, stride_qh,
        stride_cb, stride_cs, stride_ch,
        stride_bt,
        stride_ot, stride_oh,
        GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
        IEEE: tl.constexpr, UPCAST: tl.constexpr,
    ):
        seq = tl.program_id(0)
        kvh = tl.program_id(1)
        ctx_len = tl.load(lens_ptr + seq)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        g_ok = g < GROUP
        d_ok = d < HEAD_DIM
        heads = kvh * GROUP + g
        q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + d[None, :],
                    mask=g_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
        for start in range(0, ctx_len, BLOCK_N):
            pos = start + tl.arange(0, BLOCK_N)
            p_ok = pos < ctx_len
            block = tl.load(bt_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=p_ok, other=0).to(tl.int64)
            row = block * stride_cb + (pos % BLOCK_SIZE).to(tl.int64) * stride_cs + kvh * stride_ch
            kv_mask = p_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where(p_ok[None, :], s * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + row[:, None] + d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                v = v.to(tl.float32)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        l_i = tl.where(l_i == 0.0, 1.0, l_i)  # an empty context (a padded graph row) gives zeros, not NaN
        out = acc / l_i[:, None]
        tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=g_ok[:, None] & d_ok[None, :])

    return triton.jit(_kernel_source)


def _check_interpreter() -> None:
    # triton decides at import whether its own helpers (tl.zeros...) are interpreted
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("paged_decode_attention on CPU tensors runs in Triton's interpreter, which needs "
                           "TRITON_INTERPRET=1 in the environment before triton is imported")


def paged_decode_attention(
    q: torch.Tensor,
    cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    out: torch.Tensor | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Attention of one query token per sequence over its paged context.

    Args:
        q: ``[B, heads, head_dim]``.
        cache: one layer's KV cache ``[2, num_blocks, block_size, kv_heads, head_dim]``.
        block_tables: ``[B, max_blocks]`` (int32 or int64); entries past a sequence's last block
            are never read.
        context_lens: ``[B]`` tokens of each sequence in the cache (this step's included);
            0 gives a zero output row.
        scale: softmax scale.
        out: optional ``[B, heads, head_dim]`` output (may be a view with strided tokens).
        block_n: context tokens per loop iteration (default: 64 on CUDA, 16 interpreted).

    Returns ``out``.
    """
    if not available():
        raise RuntimeError("paged_decode_attention needs triton (pip install triton)")
    b, heads, d = q.shape
    kvh = cache.shape[3]
    if heads % kvh:
        raise ValueError(f"{heads} query heads are not a multiple of {kvh} KV heads")
    if q.stride(-1) != 1 or cache.stride(-1) != 1:
        raise ValueError("q and the cache need a contiguous head dimension")
    group = heads // kvh
    out = torch.empty_like(q) if out is None else out
    if b == 0:
        return out
    interpret = not q.is_cuda
    if interpret:
        _check_interpreter()
    # tl.dot wants every dimension >= 16
    block_g = max(16, _next_pow2(group))
    block_d = max(16, _next_pow2(d))
    block_n = block_n or (16 if interpret else 64)
    k_cache, v_cache = cache[0], cache[1]
    _kernel()[(b, kvh)](
        q, k_cache, v_cache, block_tables, context_lens, out, float(scale),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=block_g, HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_SIZE=cache.shape[2], BLOCK_N=block_n,
        IEEE=q.dtype == torch.float32 or interpret,
        # the interpreter's tl.dot gets 16-bit floats wrong: there it computes in fp32
        UPCAST=interpret and q.dtype != torch.float32,
    )
    return out
