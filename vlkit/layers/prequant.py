"""Checkpoints already quantized to 4 bits: AWQ ("gemm") and GPTQ (v1 "gptq" and "gptq_v2").

A checkpoint whose config has a ``quantization_config`` with ``quant_method`` ``"awq"`` or
``"gptq"`` (the hub's ``*-AWQ`` / ``*-GPTQ-Int4`` repos, as AutoAWQ, AutoGPTQ and GPTQModel write
them) stores each quantized linear layer ``X`` as ``X.qweight``, ``X.qzeros``, ``X.scales`` (and
GPTQ's ``X.g_idx``) instead of ``X.weight``. The formats (read in AutoAWQ's
``awq/modules/linear/gemm.py`` and ``awq/utils/packing_utils.py``, AutoGPTQ's
``qlinear_cuda.py``, GPTQModel's ``nn_modules/qlinear``) with ``K`` inputs, ``N`` outputs and
``G = K / group_size`` groups:

- AWQ gemm: ``qweight`` int32 ``[K, N/8]`` and ``qzeros`` int32 ``[G, N/8]``, eight 4-bit codes
  per word along the outputs, nibble ``i`` holding column ``8c + (0, 2, 4, 6, 1, 3, 5, 7)[i]``;
  ``scales`` fp16 ``[G, N]``; ``W[n, k] = (q[k, n] - z[g, n]) * s[g, n]``.
- GPTQ: ``qweight`` int32 ``[K/8, N]``, nibble ``j`` of word ``r`` holding input ``8r + j``;
  ``qzeros`` int32 ``[G, N/8]`` packed along the outputs in plain order, storing ``z - 1`` in
  the v1 format (``checkpoint_format`` ``"gptq"`` or absent) and ``z`` in ``"gptq_v2"``;
  ``scales`` fp16 ``[G, N]``; ``g_idx`` int32 ``[K]``, each input's group:
  ``W[n, k] = (q[k, n] - z[g_idx[k], n]) * s[g_idx[k], n]``.

Loading maps these onto vlkit's int4 layers (:func:`vlkit.layers.quant.int4_weight`, the same
kernels as round-to-nearest int4) exactly: code ``u = q``, scale ``s``, zero ``(8 - z) * s``. The
codes travel through the model's own weight loaders as the dense ``weight`` (so fusing q/k/v and
gate/up and tensor-parallel slicing are the dense path's), the scales and zeros as two extra
per-group parameters with the same loaders. With act-order (``desc_act``: ``g_idx`` not
``k // group_size``) groups are not contiguous runs of inputs, which the group-wise kernels need:
such a layer is dequantized exactly and runs dense in the compute dtype (logged). Layers that the
checkpoint leaves unquantized (``lm_head``, ``modules_to_not_convert``) stay dense.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("vlkit.quant")

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column 8c + AWQ_ORDER[i]
AWQ_UNDO = tuple(AWQ_ORDER.index(j) for j in range(8))  # column j is in nibble AWQ_UNDO[j]
SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True)
class PrequantConfig:
    """A checkpoint's ``quantization_config``, checked."""

    method: str  # "awq" | "gptq"
    bits: int
    group_size: int
    zero_point: bool = True  # AWQ
    version: str = "gemm"  # AWQ
    sym: bool = False  # GPTQ
    desc_act: bool = False  # GPTQ
    checkpoint_format: str = "gptq"  # GPTQ: "gptq" (zeros stored minus one) or "gptq_v2"
    modules_to_not_convert: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.method}-int{self.bits}"


def parse_config(config: dict[str, Any] | None) -> PrequantConfig | None:
    """The checkpoint's pre-quantization, or ``None`` when its weights are dense.

    Raises:
        ValueError: a quantization vlkit cannot load, with what it is.
    """
    qc = (config or {}).get("quantization_config")
    if not qc:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method not in ("awq", "gptq"):
        raise ValueError(f"the checkpoint is quantized with {method or 'an unnamed method'!r}; vlkit loads AWQ and GPTQ "
                         "4-bit checkpoints (or quantizes dense ones itself: EngineConfig(quantization=...))")
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    if bits != 4:
        raise ValueError(f"{method.upper()} with bits={bits} is not supported: vlkit loads 4-bit AWQ/GPTQ checkpoints")
    not_convert = tuple(qc.get("modules_to_not_convert") or ())
    if method == "awq":
        version = str(qc.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"AWQ version {version!r} is not supported: vlkit loads AWQ 'gemm' checkpoints "
                             "(the layout of the hub's AWQ repos)")
        zero_point = bool(qc.get("zero_point", True))
        if not zero_point:
            raise ValueError("AWQ with zero_point=false is not supported (AutoAWQ writes it only in its marlin layout)")
        return PrequantConfig("awq", bits, group, zero_point=True, version=version, modules_to_not_convert=not_convert)
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"GPTQ checkpoint_format {fmt!r} is not supported (vlkit loads 'gptq' and 'gptq_v2')")
    if group == -1:
        raise ValueError("GPTQ with group_size=-1 (one group per row) is not supported yet")
    return PrequantConfig("gptq", bits, group, sym=bool(qc.get("sym", True)), desc_act=bool(qc.get("desc_act", False)),
                          checkpoint_format=fmt, modules_to_not_convert=not_convert)


# -- unpacking -------------------------------------------------------------------------------
def _nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 ``[..., W]`` -> uint8 ``[..., W, 8]``: nibble ``i`` of each word (bits 4i..4i+3)."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    return ((words.to(torch.int32).unsqueeze(-1) >> shifts) & 15).to(torch.uint8)


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ gemm: ``(q uint8 [K, N], z uint8 [G, N])``."""
    q = _nibbles(qweight)[..., list(AWQ_UNDO)].reshape(qweight.shape[0], -1)
    z = _nibbles(qzeros)[..., list(AWQ_UNDO)].reshape(qzeros.shape[0], -1)
    return q, z


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, v1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ: ``(q uint8 [K, N], z uint8 [G, N])`` (the v1 format's stored ``z - 1`` undone)."""
    q = _nibbles(qweight.t()).reshape(qweight.shape[1], -1).t()  # inputs 8r + j along dim 0
    z = _nibbles(qzeros).reshape(qzeros.shape[0], -1)
    if v1:
        z = ((z.to(torch.int16) + 1) & 15).to(torch.uint8)  # AutoGPTQ's "+1", wrapping like its packer
    return q.contiguous(), z


def layer_codes(cfg: PrequantConfig, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """One layer's checkpoint tensors -> ``(u uint8 [N, K], scale fp32 [N, G], zero fp32 [N, G],
    grouped)`` in vlkit's convention ``W = (u - 8) * scale + zero`` (``zero`` of each input's
    group); ``grouped`` is False for act-order layers, whose ``scale`` / ``zero`` are then
    ``[N, K]``, one per input."""
    if cfg.method == "awq":
        q, z = unpack_awq(tensors["qweight"], tensors["qzeros"])
    else:
        q, z = unpack_gptq(tensors["qweight"], tensors["qzeros"], v1=cfg.checkpoint_format == "gptq")
    s = tensors["scales"].float()  # [G, N]
    k, n = q.shape
    zero = (8 - z.float()) * s  # [G, N]
    g_idx = tensors.get("g_idx")
    trivial = torch.arange(k) // cfg.group_size
    if g_idx is not None and not torch.equal(g_idx.long(), trivial):
        g = g_idx.long()
        return q.t().contiguous(), s[g].t().contiguous(), zero[g].t().contiguous(), False
    if s.shape[0] != k // cfg.group_size:
        raise ValueError(f"scales have {s.shape[0]} groups, {k} inputs in groups of {cfg.group_size} need {k // cfg.group_size}")
    return q.t().contiguous(), s.t().contiguous(), zero.t().contiguous(), True


def dequantize_layer(cfg: PrequantConfig, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense fp32 ``[N, K]`` weight a checkpoint layer stands for."""
    u, s, z, grouped = layer_codes(cfg, tensors)
    if grouped:
        n, k = u.shape
        g = cfg.group_size
        return ((u.float().view(n, k // g, g) - 8) * s[..., None] + z[..., None]).view(n, k)
    return (u.float() - 8) * s + z


# -- loading ---------------------------------------------------------------------------------
def _group_loader(module: nn.Module, group: int):
    """The weight loader of ``module`` for a per-group tensor ``[N, K / group]``: the module's
    own (outputs sliced and fused the same way), except that a row-parallel layer slices groups."""
    from vlkit.layers.linear import RowParallelLinear, _copy, check_weight_shape

    if isinstance(module, RowParallelLinear):
        def load(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
            check_weight_shape(param, (param.shape[0], module.in_features // group), loaded)
            n = param.shape[1]
            _copy(param, param.data, loaded.narrow(1, module.tp_rank * n, n))
        return load
    return module.weight_loader if hasattr(module, "weight_loader") else None


def prepare_model(model: nn.Module, cfg: PrequantConfig, quantized: set[str]) -> list[str]:
    """Give every layer the checkpoint quantized (``quantized``: model-side module names) two
    fp32 per-group parameters, ``qscale`` and ``qzero``, loaded like its weight. Returns them."""
    from vlkit.layers.linear import RowParallelLinear

    done = []
    for name, m in model.named_modules():
        if name not in quantized:
            continue
        w = m.weight
        n, k = w.shape
        if isinstance(m, RowParallelLinear) and k % cfg.group_size:
            raise ValueError(f"{name}: {k} inputs per tensor-parallel rank are not whole groups of {cfg.group_size}")
        loader = _group_loader(m, cfg.group_size)
        for pname in ("qscale", "qzero"):
            p = nn.Parameter(torch.zeros(n, max(1, k // cfg.group_size), dtype=torch.float32, device=w.device),
                             requires_grad=False)
            p.weight_loader = loader
            if hasattr(w, "shard_ids"):
                p.shard_ids = w.shard_ids
            m.register_parameter(pname, p)
        done.append(name)
    return done


def translate(weights: Iterable[tuple[str, torch.Tensor]], cfg: PrequantConfig,
              dense: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Checkpoint tensors -> the names the model loads: a quantized layer ``X`` (its tensors
    arrive in any order) becomes ``X.weight`` (its codes, as floats 0..15), ``X.qscale`` and
    ``X.qzero``; with ``dense`` (act-order checkpoints) it becomes its exact dequantized
    ``X.weight``. Other tensors pass through."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    need = ("qweight", "qzeros", "scales") + (("g_idx",) if cfg.method == "gptq" else ())

    def emit(prefix: str, parts: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        u, sc, z, grouped = layer_codes(cfg, parts)
        if dense or not grouped:
            if not dense:
                raise ValueError(f"{prefix}: act-order groups (g_idx) in a checkpoint whose desc_act is false")
            yield f"{prefix}.weight", dequantize_layer(cfg, parts)
            return
        yield f"{prefix}.weight", u.float()
        yield f"{prefix}.qscale", sc
        yield f"{prefix}.qzero", z

    for name, t in weights:
        prefix, _, suffix = name.rpartition(".")
        if suffix not in SUFFIXES:
            yield name, t
            continue
        parts = pending.setdefault(prefix, {})
        parts[suffix] = t
        if all(k in parts for k in need):
            del pending[prefix]
            yield from emit(prefix, parts)
    for prefix, parts in pending.items():  # GPTQ layers saved without g_idx: groups in order
        if not all(k in parts for k in need[:3]):
            raise ValueError(f"{prefix}: incomplete {cfg.method.upper()} tensors (has {', '.join(sorted(parts))})")
        yield from emit(prefix, parts)


def quantized_modules(model: nn.Module, qweight_shapes: dict[str, tuple[int, ...]], rename,
                      method: str) -> set[str]:
    """The model-side names of the layers the checkpoint stores quantized: each ``X.qweight``
    (with its shape) through ``rename`` (the spec's checkpoint -> backbone names) and the model's
    own routing (fused q/k/v, gate/up; InternLM2's packed ``wqkv``), fed a meta tensor of the
    dense weight's shape."""
    out = set()
    for name, shape in qweight_shapes.items():
        new = rename(name[: -len("qweight")] + "weight")
        if new is None:
            continue
        rows, cols = shape
        dense = (cols * 8, rows) if method == "awq" else (cols, rows * 8)  # [N, K]
        for pname, _, _ in model.map_weight(new, torch.empty(dense, device="meta")):
            out.add(pname.rpartition(".")[0])
    return out


def finalize(model: nn.Module, names: list[str], cfg: PrequantConfig, compute_dtype: torch.dtype):
    """After loading: turn each prepared layer's codes, scales and zeros into its quantized
    weight (:func:`vlkit.layers.quant.int4_weight`) and drop the dense and per-group tensors."""
    from vlkit.layers.quant import QuantReport, int4_weight

    rep = QuantReport(cfg.name)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in names:
            m = modules[name]
            w = m.weight.detach()
            u = w.float().round().clamp_(0, 15).to(torch.uint8)
            s, z = m.qscale.detach(), m.qzero.detach()
            sym = bool((z == 0).all())
            qw = int4_weight(u, s, None if sym else z, cfg.group_size, "int4" if sym else "int4-asym", compute_dtype)
            m.packed_weight = qw
            rep.quantized.append(name)
            rep.kernel_layers += int(qw.kernel)
            rep.bytes_after += qw.nbytes
            m.weight.data = torch.empty(0, dtype=w.dtype, device=w.device)
            del m.qscale, m.qzero
            if getattr(m, "bias", None) is not None:
                m.bias.data = m.bias.data.to(compute_dtype)
    logger.info("%s checkpoint: %d layers on int4 kernels (%d on a CPU kernel), %.1f MB", cfg.name,
                len(rep.quantized), rep.kernel_layers, rep.bytes_after / 1e6)
    return rep
