"""Linear layers, plain and tensor-parallel, each with the ``weight_loader`` that slices its shard.

Every parameter gets a ``weight_loader(param, loaded_weight, shard_id=None)`` attribute: it takes
the *full* checkpoint tensor, checks its shape (raising :class:`vlkit.layers.weights.WeightShapeError`
naming the expected full shape), slices this rank's part and copies it in. Packed layers (merged
gate/up, fused QKV) take a ``shard_id`` naming which part the tensor is, and list the shard ids
they expect in ``param.shard_ids`` so the loader can report a missing one.

On CPU in fp32, and in bf16 where the CPU has AVX512-BF16/AMX, :func:`prepack_linears` hands
the weights to oneDNN in its blocked layout once after loading (MKL's sgemm is slow on small
batches, and on AMD CPUs in general; oneDNN's bf16 GEMM with a packed weight is 1.2-3x plain
``F.linear`` in bf16 on W1's shapes); every linear then runs through :func:`linear`, which uses
the packed weight when there is one. :func:`prepack_nn_linears` does the same for the plain
``nn.Linear`` layers of a plugin's vision model.

The ``packed_weight`` slot may instead hold a :class:`vlkit.layers.quant.QuantizedWeight`
(``EngineConfig.quantization``): :func:`linear` then calls it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.layers.tp import all_reduce, tp_rank, tp_world_size
from vlkit.layers.weights import check_weight_shape


def _copy(param: nn.Parameter, dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


def onednn_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        os.environ.get("VLKIT_ONEDNN", "1") != "0"
        and torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed=None) -> torch.Tensor:
    """``x @ weight.T + bias``: through oneDNN when ``packed`` is the prepacked weight (a tensor),
    through the quantized kernels when it is a :class:`~vlkit.layers.quant.QuantizedWeight`."""
    if packed is None:
        return F.linear(x, weight, bias)
    if isinstance(packed, torch.Tensor):
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return packed(x, bias)


_ONEDNN_CHECKED: dict[torch.dtype, bool] = {}


def _onednn_bf16_supported() -> bool:
    fn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:
        return False


def _onednn_linear_ok(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this build's oneDNN linear runs in ``dtype`` (fp32, or bf16 where the CPU has
    native bf16) and agrees with ``F.linear`` (checked once per dtype)."""
    if dtype not in _ONEDNN_CHECKED:
        ok = False
        if onednn_available() and (dtype == torch.float32 or (dtype == torch.bfloat16 and _onednn_bf16_supported())):
            try:
                with torch.no_grad():
                    w, x = torch.randn(24, 40).to(dtype), torch.randn(5, 40).to(dtype)
                    got = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 16),
                                                             None, "none", [], "")
                    tol = 1e-4 if dtype == torch.float32 else 3e-2
                    ok = bool(torch.allclose(got.float(), F.linear(x.float(), w.float()), atol=tol, rtol=tol))
            except Exception:
                ok = False
        _ONEDNN_CHECKED[dtype] = ok
    return _ONEDNN_CHECKED[dtype] and onednn_available()


def _packable(w: torch.Tensor) -> bool:
    return (w.dtype in (torch.float32, torch.bfloat16) and w.device.type == "cpu" and w.dim() == 2
            and w.numel() > 0 and _onednn_linear_ok(w.dtype))


def _shared_params(model: nn.Module) -> set[int]:
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {k for k, v in owners.items() if v > 1}


def prepack_linears(model: nn.Module, batch_hint: int = 16) -> int:
    """Prepack the weight of every layer with an empty ``packed_weight`` slot for oneDNN (CPU,
    fp32, or bf16 where oneDNN runs it natively); quantized layers are left alone.

    The dense copy of a weight used nowhere else is released. Returns how many were packed;
    0 (and nothing changed) when oneDNN is unavailable or disagrees with ``F.linear``.
    """
    if not onednn_available():
        return 0
    layers = [m for m in model.modules() if hasattr(m, "packed_weight") and m.packed_weight is None]
    shared = _shared_params(model)
    n = 0
    with torch.no_grad():
        for m in layers:
            w = m.weight
            if not _packable(w):
                continue
            bias = getattr(m, "bias", None)
            if bias is not None and bias.dtype != w.dtype:
                continue
            m.packed_weight = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint)
            n += 1
            if id(w) not in shared:
                w.data = torch.empty(0, dtype=w.dtype)  # the packed copy replaces it
    return n


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that multiplies through oneDNN with a prepacked copy of its weight.

    Made by :func:`prepack_nn_linears`, which turns a built ``nn.Linear`` into one in place;
    ``weight`` keeps its dense values (code that reads ``weight.shape`` or the state dict still
    works), at the cost of a second copy.
    """

    packed_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")


def prepack_nn_linears(model: nn.Module, batch_hint: int = 256,
                       dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> int:
    """Run every plain CPU ``nn.Linear`` of ``model`` whose weight dtype is in ``dtypes`` through
    oneDNN (:class:`PackedLinear`); pass ``(torch.bfloat16,)`` for a bf16 model (packed only
    where the CPU runs bf16 natively).

    For modules a plugin builds with ``torch.nn`` (vision towers, projectors): on CPU fp32
    oneDNN's blocked GEMM runs at about twice MKL's speed on this project's machines (2.3x on
    CLIP-sized ``[4112, 256] x [256, 1024]``). Subclasses of ``nn.Linear`` are left alone, as
    are weights of another dtype or not on the CPU. Returns how many layers were converted;
    0 when oneDNN is unavailable, disagrees with ``F.linear``, or ``VLKIT_ONEDNN=0``.
    """
    if not isinstance(model, nn.Module) or not onednn_available():
        return 0
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if (type(m) is nn.Linear and m.weight.dtype in dtypes and _packable(m.weight)
                    and (m.bias is None or m.bias.dtype == m.weight.dtype)):
                m.packed_weight = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_hint)
                m.__class__ = PackedLinear
                n += 1
    return n


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
    """Copy a replicated tensor whole."""
    check_weight_shape(param, tuple(param.shape), loaded)
    _copy(param, param.data, loaded)


class ReplicatedLinear(nn.Module):
    """``y = x W^T + b``, the same on every rank."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.weight.weight_loader = default_weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
            self.bias.weight_loader = default_weight_loader
        else:
            self.register_parameter("bias", None)
        self.packed_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed_weight)


class ColumnParallelLinear(nn.Module):
    """Output features split over ranks: each rank computes ``out_features / tp`` of ``y``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_world_size()
        if out_features % self.tp_size:
            raise ValueError(f"out_features {out_features} is not divisible by tp={self.tp_size}")
        self.in_features = in_features
        self.out_features = out_features
        self.out_per_rank = out_features // self.tp_size
        self.weight = nn.Parameter(torch.empty(self.out_per_rank, in_features))
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_per_rank))
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)
        self.packed_weight = None

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        full = (self.out_features,) + tuple(param.shape[1:])
        check_weight_shape(param, full, loaded)
        n = self.out_per_rank
        _copy(param, param.data, loaded.narrow(0, self.tp_rank * n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed_weight)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input in one matmul (e.g. gate and up).

    Checkpoint tensors come separately with ``shard_id`` = their index in ``output_sizes``;
    each rank's weight is ``[part0_rank, part1_rank, ...]`` stacked along the output dim.
    """

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False):
        self.output_sizes = list(output_sizes)
        super().__init__(in_features, sum(output_sizes), bias)
        for p in self.parameters():
            p.shard_ids = tuple(range(len(self.output_sizes)))

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if shard_id is None:  # already merged in the checkpoint
            return super().weight_loader(param, loaded)
        size = self.output_sizes[shard_id]
        check_weight_shape(param, (size,) + tuple(param.shape[1:]), loaded)
        n = size // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        _copy(param, param.data.narrow(0, offset, n), loaded.narrow(0, self.tp_rank * n, n))


class QKVParallelLinear(ColumnParallelLinear):
    """Fused query/key/value projection, split over ranks by attention head.

    Each rank holds ``num_heads / tp`` query heads and ``num_kv_heads / tp`` key/value heads
    (key/value heads are replicated when ``tp > num_kv_heads``). ``shard_id`` is ``"q"``,
    ``"k"`` or ``"v"``.
    """

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False):
        tp = tp_world_size()
        if num_heads % tp:
            raise ValueError(f"num_attention_heads {num_heads} is not divisible by tp={tp}")
        if num_kv_heads % tp and tp % num_kv_heads:
            raise ValueError(f"num_key_value_heads {num_kv_heads} and tp={tp} do not divide")
        self.head_dim = head_dim
        self.total_num_heads = num_heads
        self.total_num_kv_heads = num_kv_heads
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias)
        for p in self.parameters():
            p.shard_ids = ("q", "k", "v")

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        d = self.head_dim
        q_size, kv_size = self.num_heads * d, self.num_kv_heads * d
        if shard_id is None:  # a fused checkpoint tensor laid out [q | k | v]
            full_q, full_kv = self.total_num_heads * d, self.total_num_kv_heads * d
            check_weight_shape(param, (full_q + 2 * full_kv,) + tuple(param.shape[1:]), loaded)
            q, k, v = loaded.split([full_q, full_kv, full_kv], dim=0)
            for sid, t in (("q", q), ("k", k), ("v", v)):
                self.weight_loader(param, t, sid)
            return
        if shard_id == "q":
            check_weight_shape(param, (self.total_num_heads * d,) + tuple(param.shape[1:]), loaded)
            src = loaded.narrow(0, self.tp_rank * q_size, q_size)
            dst = param.data.narrow(0, 0, q_size)
        else:
            check_weight_shape(param, (self.total_num_kv_heads * d,) + tuple(param.shape[1:]), loaded)
            kv_rank = self.tp_rank // self.kv_replicas
            src = loaded.narrow(0, kv_rank * kv_size, kv_size)
            offset = q_size if shard_id == "k" else q_size + kv_size
            dst = param.data.narrow(0, offset, kv_size)
        _copy(param, dst, src)


class RowParallelLinear(nn.Module):
    """Input features split over ranks; partial products are summed with an all-reduce.

    The input is expected already split (the output of a column-parallel layer). The bias is
    added once, after the reduction.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_world_size()
        if in_features % self.tp_size:
            raise ValueError(f"in_features {in_features} is not divisible by tp={self.tp_size}")
        self.in_features = in_features
        self.in_per_rank = in_features // self.tp_size
        self.weight = nn.Parameter(torch.empty(out_features, self.in_per_rank))
        self.weight.weight_loader = self.weight_loader
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
            self.bias.weight_loader = default_weight_loader
        else:
            self.register_parameter("bias", None)
        self.packed_weight = None

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        check_weight_shape(param, (param.shape[0], self.in_features), loaded)
        n = self.in_per_rank
        _copy(param, param.data, loaded.narrow(1, self.tp_rank * n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return linear(x, self.weight, self.bias, self.packed_weight)
        y = all_reduce(linear(x, self.weight, None, self.packed_weight))
        if self.bias is not None:
            y = y + self.bias
        return y
