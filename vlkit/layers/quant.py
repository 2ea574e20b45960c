"""Weight-only quantization of the language model's linear layers and LM head (CPU first).

``EngineConfig.quantization`` picks a method; the runner calls :func:`quantize_model` once after
``load_weights``, on every tensor-parallel rank, on that rank's shard. Round-to-nearest, from the
precision the weights were loaded in (the runner loads them in fp32 for this):

- ``"int8"``: symmetric, one scale per output channel: ``w ~= q * s``, ``q`` in ``[-127, 127]``.
  Under TP a row-parallel layer's scale is the max over all ranks' shards (one all-reduce at
  load), so every rank holds exactly the codes of the unsharded layer.
- ``"int4"``: symmetric, one scale per group of ``group_size`` input channels:
  ``w ~= (u - 8) * s`` with ``u`` in ``[0, 15]``; ``s = -m / 8`` with ``m`` the group's element
  of largest magnitude, sign included, so that ``m`` itself is code 0 (llama.cpp's Q4_0; a
  negative ``s`` is fine) and the other side of zero still reaches ``7 * |s|``.
- ``"int4-asym"``: per group, scale and zero point: ``w ~= (u - 8) * s + z`` with
  ``s = (max - min) / 15``, ``z = min + 8 * s`` (the "mid-point" zeros of PyTorch's int4 kernels).

Group size: when an int4 layer's input size ``K`` is not a multiple of ``group_size``, the largest
power of two below it that divides ``K`` is used; when that would be under 32 (the smallest
group PyTorch's CPU kernel takes) the layer stays dense in the compute dtype, and it is logged.

Each quantized layer's ``packed_weight`` slot (the one oneDNN prepacking uses) holds a
:class:`QuantizedWeight`; :func:`vlkit.layers.linear.linear` calls it. The dense ``weight`` is
released (kept only where it is shared, e.g. a tied LM head, whose input embedding stays dense).

Kernels: on CPU, for int8 vlkit's own kernel (``vlkit/kernels/quant_gemm.cpp``, where the CPU has
AVX512-BF16 and ``K % 32 == 0``: codes widened to bf16 in registers, fp32 sums; 1.5-2x PyTorch's
at 16 rows) or else ``torch.ops.aten._weight_int8pack_mm`` (needs ``K % 16 == 0``, it returns
garbage otherwise in torch 2.13; ``VLKIT_INT8_KERNEL=torch`` picks it), and, for int4, vlkit's own kernel (``vlkit/kernels/quant_gemm.cpp``,
compiled at first use where the CPU has AVX512-BF16: codes in 64-channel blocks, fp32 scales, fp32
sums; up to ``INT4_VLKIT_MAX_ROWS`` rows it multiplies straight from the codes, above that (prefill)
it dequantizes the layer to bf16 once and runs one dense GEMM) or else PyTorch's
``_weight_int4pack_mm_for_cpu`` (needs ``N % 16 == 0``), all with bf16 activations; PyTorch's are
checked once against the dequantized reference before use. ``VLKIT_INT4_KERNEL=torch`` picks
PyTorch's int4 kernel where both could run.
For int8 batches of at least ``INT8_DENSE_MIN_ROWS`` rows (prefill) the codes are converted to
bf16 on the fly and run through the dense GEMM instead, which is faster there (PyTorch's int4
kernel's packing is CPU-specific and is not unpacked: on that kernel int4 prefill stays on it).
Everywhere else (another device, a build without them, a shape they refuse, or
``VLKIT_QUANT_KERNELS=0``) the layer dequantizes and runs ``F.linear``: the same numbers, slower.
Activations of another dtype than the compute dtype are cast around the matmul.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("vlkit.quant")

QUANT_METHODS = ("int8", "int4", "int4-asym")
INT4_GROUPS = (32, 64, 128, 256)  # what the CPU int4 kernel accepts
MIN_GROUP = 32
# int8 on the CPU kernel: from this many rows on (prefill), converting the codes to bf16 and
# running the dense bf16 GEMM is faster than _weight_int8pack_mm (2-3x at 256 rows, W1 shapes)
INT8_DENSE_MIN_ROWS = int(os.environ.get("VLKIT_QUANT_DENSE_ROWS", "48"))
# vlkit's int4 kernel: up to this many rows straight from the codes (it is compute-bound from
# ~8 rows on 2 cores, where a bf16 GEMM on the dequantized layer costs about the same)
INT4_VLKIT_MAX_ROWS = int(os.environ.get("VLKIT_INT4_MAX_ROWS", "16"))
VLKIT_BLOCK = 64  # input channels per block of vlkit's int4 packing


def check_method(method: str | None) -> None:
    if method is not None and method not in QUANT_METHODS:
        raise ValueError(f"quantization must be one of {', '.join(QUANT_METHODS)} or None, got {method!r}")


def pick_group(k: int, group_size: int) -> int | None:
    """The int4 group for input size ``k``: ``group_size`` when it divides ``k``, else the largest
    power of two below it that does; ``None`` when that is under :data:`MIN_GROUP`."""
    if k % group_size == 0 and group_size >= MIN_GROUP:
        return group_size
    g = 1 << (min(group_size, k).bit_length() - 1)
    while g >= MIN_GROUP and k % g:
        g //= 2
    return g if g >= MIN_GROUP else None


# -- round to nearest ------------------------------------------------------------------------
def quantize_int8(w: torch.Tensor, amax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [N, K], scale fp32 [N])`` with ``w ~= q * scale[:, None]``; ``amax`` overrides
    the per-row absolute max (e.g. the max over tensor-parallel shards)."""
    w = w.float()
    if amax is None:
        amax = w.abs().amax(dim=1)
    scale = (amax / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.to(dtype) * scale.to(dtype)[:, None]).to(dtype)


def quantize_int4(w: torch.Tensor, group: int, asym: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(u uint8 [N, K] in 0..15, scales fp32 [N, K / group], zeros fp32 [N, K / group])`` with
    ``w ~= (u - 8) * scale + zero`` group-wise (zeros are all 0 when symmetric)."""
    n, k = w.shape
    if k % group:
        raise ValueError(f"K={k} is not a multiple of the group size {group}")
    wg = w.float().reshape(n, k // group, group)
    if asym:
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        u = torch.round((wg - lo) / scale).clamp_(0, 15)
        zero = lo + 8 * scale
    else:  # the element of largest magnitude maps to -8 exactly (llama.cpp's Q4_0): all 16 codes in use
        idx = wg.abs().argmax(-1, keepdim=True)
        scale = wg.gather(-1, idx) / -8
        scale = torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale)
        u = torch.round(wg / scale).clamp_(-8, 7) + 8
        zero = torch.zeros_like(scale)
    return u.reshape(n, k).to(torch.uint8), scale.squeeze(-1), zero.squeeze(-1)


def dequantize_int4(u: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n, k = u.shape
    ug = u.reshape(n, k // group, group).to(dtype) - 8
    return (ug * scale.to(dtype)[..., None] + zero.to(dtype)[..., None]).reshape(n, k).to(dtype)


def pack_nibbles(u: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` codes 0..15 -> ``[N, K / 2]`` uint8 (even column in the low nibble)."""
    return (u[:, 0::2] | (u[:, 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    return torch.stack((p & 15, p >> 4), dim=-1).reshape(p.shape[0], -1)


def pack_blocks(u: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` codes -> ``[N, K / 2]`` uint8 in vlkit's int4 kernel layout: per block of 64
    channels, byte ``j`` holds channel ``j`` (low nibble) and ``32 + j`` (high nibble)."""
    n, k = u.shape
    b = u.to(torch.uint8).reshape(n, k // VLKIT_BLOCK, 2, VLKIT_BLOCK // 2)
    return (b[:, :, 0] | (b[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_blocks(p: torch.Tensor) -> torch.Tensor:
    n, half = p.shape
    b = p.reshape(n, half // (VLKIT_BLOCK // 2), 1, VLKIT_BLOCK // 2)
    return torch.cat((b & 15, b >> 4), dim=2).reshape(n, half * 2)


# -- kernels ---------------------------------------------------------------------------------
def kernels_enabled() -> bool:
    return os.environ.get("VLKIT_QUANT_KERNELS", "1") != "0"


_KERNEL_OK: dict[str, bool] = {}


def _kernel_ok(kind: str) -> bool:
    """Whether this build's CPU kernel for ``kind`` ("int8"/"int4") runs and matches the
    dequantized reference (checked once)."""
    if kind not in _KERNEL_OK:
        ok = False
        try:
            g = torch.Generator().manual_seed(0)
            w = torch.randn(32, 64, generator=g)
            x = torch.randn(3, 64, generator=g).to(torch.bfloat16)
            if kind == "int8":
                q, s = quantize_int8(w)
                got = torch.ops.aten._weight_int8pack_mm(x, q, s.to(torch.bfloat16))
                ref = F.linear(x.float(), dequantize_int8(q, s.to(torch.bfloat16).float()))
            else:
                u, s, z = quantize_int4(w, 32, asym=True)
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32), 1)
                sz = torch.stack((s, z), -1).transpose(0, 1).contiguous().to(torch.bfloat16)
                got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, sz)
                ref = F.linear(x.float(), dequantize_int4(u, s.to(torch.bfloat16).float(),
                                                          z.to(torch.bfloat16).float(), 32))
            ok = bool(torch.allclose(got.float(), ref, atol=0.1, rtol=0.02))
        except Exception:  # missing op, or one that refuses these inputs
            ok = False
        _KERNEL_OK[kind] = ok
    return _KERNEL_OK[kind]


@dataclass
class QuantizedWeight:
    """One layer's quantized weight ``[N, K]`` and how to multiply by it.

    ``__call__(x, bias)`` is ``x @ W^T + bias`` with ``W`` the dequantized weight, computed in
    ``compute_dtype`` (``x`` of another dtype is cast in and the result cast back).
    """

    method: str
    out_features: int
    in_features: int
    compute_dtype: torch.dtype
    group: int | None = None  # int4 only
    kernel: bool = False  # a CPU kernel runs it; otherwise dequantize + F.linear
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    impl: str = ""  # which kernel: "torch" (PyTorch's), "vlkit" (int4 only), "" (none: dense fallback)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``[N, K]`` weight these codes stand for, in ``dtype`` (default: the compute dtype).

        Exactly the weight the kernel multiplies by (its scales are rounded to the compute dtype
        too), so a dense model with these weights is the kernel path's reference."""
        dtype = dtype or self.compute_dtype
        t = self.tensors
        if self.method == "int8":
            return dequantize_int8(t["q"], t["scale"].float(), torch.float32).to(dtype)
        if "scales" in t:  # vlkit's kernel, or no kernel: fp32 scales [N, K / g]
            u = unpack_blocks(t["codes64"]) if self.impl == "vlkit" else unpack_nibbles(t["nibbles"])
            sc = t["scales"]
            z = t["zeros"] if "zeros" in t else torch.zeros_like(sc)
            return dequantize_int4(u, sc, z, self.group, torch.float32).to(dtype)
        if "codes" not in t:
            if "codes" not in t:
                raise RuntimeError("int4 weights packed for PyTorch's CPU kernel keep no codes: quantize with keep_codes=True")
        u = t["codes"]
        sz = t["scales_zeros"].float()  # [K / g, N, 2]
        return dequantize_int4(u, sz[..., 0].t(), sz[..., 1].t(), self.group, torch.float32).to(dtype)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        in_dtype = x.dtype
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        t = self.tensors
        if self.kernel and x2.device.type == "cpu":
            if not x2.is_contiguous():
                x2 = x2.contiguous()
            if self.method == "int8" and x2.shape[0] >= INT8_DENSE_MIN_ROWS:
                y = F.linear(x2, t["q"].to(self.compute_dtype)) * t["scale"]
            elif self.method == "int8" and self.impl == "vlkit":
                y = _vlkit_ops().int8_linear(x2, t["q"], t["scale"])
            elif self.method == "int8":
                y = torch.ops.aten._weight_int8pack_mm(x2, t["q"], t["scale"])
            elif self.impl == "vlkit":
                ops = _vlkit_ops()
                if x2.shape[0] <= INT4_VLKIT_MAX_ROWS:
                    y = ops.int4_linear(x2, t["codes64"], t["scales"], t.get("zeros"), self.group)
                else:
                    y = F.linear(x2, ops.int4_dequantize(t["codes64"], t["scales"], t.get("zeros"), self.group))
            else:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, t["packed"], self.group, t["scales_zeros"])
            if bias is not None:
                y = y + bias.to(y.dtype)
        else:
            w = self._dense_for_fallback()
            y = F.linear(x2, w, None if bias is None else bias.to(w.dtype))
        y = y.reshape(*shape[:-1], self.out_features)
        return y if y.dtype == in_dtype else y.to(in_dtype)

    def _dense_for_fallback(self) -> torch.Tensor:
        t = self.tensors
        if self.method == "int8":
            return t["q"].to(self.compute_dtype) * t["scale"][:, None]
        if self.impl == "torch":  # on a device PyTorch's CPU kernel cannot serve
            raise RuntimeError("int4 weights packed for PyTorch's CPU kernel can only run on the CPU")
        return self.dequantize(self.compute_dtype)


def quantize_weight(w: torch.Tensor, method: str, group_size: int = 128,
                    compute_dtype: torch.dtype = torch.bfloat16, use_kernel: bool | None = None,
                    amax: torch.Tensor | None = None, keep_codes: bool = False) -> QuantizedWeight | None:
    """Quantize one ``[N, K]`` weight; ``None`` when int4 finds no usable group (stay dense).

    ``use_kernel=None`` picks the CPU kernel when it is there, works and takes this shape.
    ``keep_codes`` keeps the int4 codes next to the kernel packing (for tests and accuracy
    reports: :meth:`QuantizedWeight.dequantize`)."""
    check_method(method)
    n, k = w.shape
    cpu = w.device.type == "cpu"
    if method == "int8":
        q, scale = quantize_int8(w, amax)
        tensors = {"q": q.contiguous(), "scale": scale.to(compute_dtype)}
        if (use_kernel is not False and cpu and compute_dtype == torch.bfloat16 and k % 32 == 0
                and _int8_impl() != "torch" and _vlkit_ops() is not None):
            return QuantizedWeight(method, n, k, compute_dtype, None, True, tensors, impl="vlkit")
        ok = cpu and k % 16 == 0 and _kernel_ok("int8")
        kernel = ok if use_kernel is None else (use_kernel and ok)
        if use_kernel and not ok:
            raise RuntimeError(f"the int8 CPU kernel cannot run a [{n}, {k}] weight here")
        return QuantizedWeight(method, n, k, compute_dtype, None, kernel, tensors, impl="torch" if kernel else "")
    group = pick_group(k, group_size)
    if group is None:
        return None
    u, scale, zero = quantize_int4(w, group, asym=method == "int4-asym")
    return int4_weight(u, scale, zero if method == "int4-asym" else None, group, method, compute_dtype,
                       use_kernel, keep_codes)


def _vlkit_ops():
    from vlkit.kernels import int4_ops

    return int4_ops()


def _int4_impl() -> str:
    return os.environ.get("VLKIT_INT4_KERNEL", "vlkit")


def _int8_impl() -> str:
    return os.environ.get("VLKIT_INT8_KERNEL", "vlkit")


def int4_weight(u: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group: int,
                method: str = "int4", compute_dtype: torch.dtype = torch.bfloat16,
                use_kernel: bool | None = None, keep_codes: bool = False) -> QuantizedWeight:
    """A :class:`QuantizedWeight` from int4 codes ``u`` ``[N, K]`` (0..15) and group-wise
    ``scale`` / ``zero`` ``[N, K / group]`` (``w = (u - 8) * scale + zero``; ``zero=None`` for
    symmetric codes), laid out for the fastest kernel that takes it here (module docstring).
    Round-to-nearest quantization and already-quantized checkpoints (AWQ, GPTQ) both end here."""
    n, k = u.shape
    cpu = u.device.type == "cpu"
    if zero is None:
        zero = torch.zeros_like(scale)
        asym = False
    else:
        asym = True
    if (use_kernel is not False and cpu and compute_dtype == torch.bfloat16 and k % VLKIT_BLOCK == 0
            and group % VLKIT_BLOCK == 0 and _int4_impl() != "torch" and _vlkit_ops() is not None):
        tensors = {"codes64": pack_blocks(u), "scales": scale.float().contiguous()}
        if asym:
            tensors["zeros"] = zero.float().contiguous()
        return QuantizedWeight(method, n, k, compute_dtype, group, True, tensors, impl="vlkit")
    # PyTorch's kernel's layout: [K / g, N, 2] (scale, zero) in the activation dtype
    sz = torch.stack((scale, zero), -1).transpose(0, 1).contiguous().to(compute_dtype)
    ok = cpu and n % 16 == 0 and group in INT4_GROUPS and compute_dtype == torch.bfloat16 and _kernel_ok("int4")
    kernel = ok if use_kernel is None else (use_kernel and ok)
    if use_kernel and not ok:
        raise RuntimeError(f"the int4 CPU kernel cannot run a [{n}, {k}] weight with group {group} here")
    if kernel:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32).contiguous(), 1)
        tensors = {"packed": packed, "scales_zeros": sz}
        if keep_codes:
            tensors["codes"] = u
    else:  # no kernel: fp32 scales and zeros, the same numbers as vlkit's kernel
        tensors = {"nibbles": pack_nibbles(u), "scales": scale.float().contiguous(), "zeros": zero.float().contiguous()}
    return QuantizedWeight(method, n, k, compute_dtype, group, kernel, tensors, impl="torch" if kernel else "")


# -- whole model -----------------------------------------------------------------------------
def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers :func:`quantize_model` converts: vlkit's linear classes and ``ParallelLMHead``
    (never the input embedding)."""
    from vlkit.layers.embedding import ParallelLMHead
    from vlkit.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear

    kinds = (ColumnParallelLinear, RowParallelLinear, ReplicatedLinear, ParallelLMHead)
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2]


def _row_parallel_amax(m: nn.Module, w: torch.Tensor) -> torch.Tensor | None:
    """For a row-parallel layer under TP: each output channel's absmax over all ranks' shards."""
    from vlkit.layers.linear import RowParallelLinear

    if not isinstance(m, RowParallelLinear) or m.tp_size == 1:
        return None
    import torch.distributed as dist

    amax = w.float().abs().amax(dim=1)
    dist.all_reduce(amax, op=dist.ReduceOp.MAX)
    return amax


@dataclass
class QuantReport:
    method: str
    quantized: list[str] = field(default_factory=list)
    dense: list[str] = field(default_factory=list)  # int4 layers with no usable group
    kernel_layers: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    groups: dict[str, int] = field(default_factory=dict)  # layers whose group was made smaller


def quantize_model(model: nn.Module, method: str, group_size: int = 128,
                   compute_dtype: torch.dtype = torch.bfloat16, use_kernel: bool | None = None,
                   keep_codes: bool = False) -> QuantReport:
    """Quantize every layer of :func:`quantizable_layers` in place (see the module docstring).

    Call it on every tensor-parallel rank (row-parallel int8 layers all-reduce their scales).
    A weight shared with another module (a tied LM head) is quantized as a copy and the shared
    dense tensor kept. Returns what was done; the summary is logged at INFO.
    """
    from vlkit.layers.linear import _shared_params

    check_method(method)
    if use_kernel is None and not kernels_enabled():
        use_kernel = False
    shared = _shared_params(model)
    rep = QuantReport(method)
    with torch.no_grad():
        for name, m in quantizable_layers(model):
            w = m.weight.detach()
            n, k = w.shape
            rep.bytes_before += w.numel() * w.element_size()
            amax = _row_parallel_amax(m, w) if method == "int8" else None
            qw = quantize_weight(w, method, group_size, compute_dtype, use_kernel, amax, keep_codes)
            if qw is None:
                rep.dense.append(name)
                logger.info("quantization %s: %s [%d, %d] stays dense (no power-of-two group >= %d divides %d)",
                            method, name, n, k, MIN_GROUP, k)
                rep.bytes_after += w.numel() * w.element_size()
                continue
            if qw.group is not None and qw.group != group_size:
                rep.groups[name] = qw.group
            m.packed_weight = qw
            rep.quantized.append(name)
            rep.kernel_layers += int(qw.kernel)
            rep.bytes_after += qw.nbytes
            if id(m.weight) not in shared:
                m.weight.data = torch.empty(0, dtype=w.dtype, device=w.device)
            if getattr(m, "bias", None) is not None:
                m.bias.data = m.bias.data.to(compute_dtype)
    if rep.groups:
        logger.info("quantization %s: smaller groups where %d does not divide K: %s", method, group_size, rep.groups)
    logger.info("quantization %s: %d layers (%d on the CPU kernel), %d dense; %.1f MB -> %.1f MB", method,
                len(rep.quantized), rep.kernel_layers, len(rep.dense), rep.bytes_before / 1e6, rep.bytes_after / 1e6)
    return rep


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Put dense weights back (``dtype``) for every quantized layer: the reference model whose
    weights are exactly the dequantized codes. Needs the codes (``keep_codes`` for int4 on the
    kernel). Returns how many layers were restored."""
    n = 0
    with torch.no_grad():
        for m in model.modules():
            qw = getattr(m, "packed_weight", None)
            if isinstance(qw, QuantizedWeight):
                w = qw.dequantize(dtype)
                if m.weight.numel():  # shared (tied): keep the embedding, give the head its own
                    m.weight = nn.Parameter(w, requires_grad=False)
                else:
                    m.weight.data = w
                m.packed_weight = None
                n += 1
    return n
