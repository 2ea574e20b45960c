"""AWQ and GPTQ 4-bit checkpoints made from a dense one, for tests (:mod:`vlkit.layers.prequant`).

:func:`write_prequantized` rounds every linear layer of a checkpoint's decoder layers
(``*_proj.weight``, InternLM2's ``wqkv``/``wo``/``w1..w3``, as AutoAWQ and AutoGPTQ do; the LM head, embeddings and anything outside the
layers stay dense) group-wise to 4 bits, packs the codes the way AutoAWQ ("gemm") or AutoGPTQ /
GPTQModel ("gptq" v1, "gptq_v2") write them, and adds the ``quantization_config`` those libraries
put in ``config.json``. It also writes the *dense twin*: the same checkpoint with each quantized
weight replaced by exactly the weight its codes stand for, the reference a loader must equal.
The packers are checked against tensors the original libraries wrote (tests/fixtures/quant).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from vlkit.layers.prequant import AWQ_ORDER

# decoder layers' linears: LLaMA/Qwen2 names (*_proj) and InternLM2's (wqkv, wo, w1..w3)
_LINEAR = re.compile(r"(^|\.)layers\.\d+\..*(_proj|\.wqkv|\.wo|\.w1|\.w2|\.w3)\.weight$")
_VISION = re.compile(r"vision|visual")  # the towers stay dense (modules_to_not_convert in real repos)


def _words(nibbles: np.ndarray) -> torch.Tensor:
    """uint8 ``[..., 8]`` codes -> int32 ``[...]`` words, nibble ``i`` at bits ``4i``."""
    acc = np.zeros(nibbles.shape[:-1], dtype=np.uint64)
    for i in range(8):
        acc |= (nibbles[..., i].astype(np.uint64) & 15) << np.uint64(4 * i)
    return torch.from_numpy(acc.astype(np.uint32).view(np.int32))


def pack_awq(q: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [K, N]``, ``z [G, N]`` codes -> AWQ gemm ``qweight [K, N/8]``, ``qzeros [G, N/8]``."""
    def pack(a: torch.Tensor) -> torch.Tensor:
        r, n = a.shape
        a = a.numpy().reshape(r, n // 8, 8)[..., list(AWQ_ORDER)]  # nibble i <- column AWQ_ORDER[i]
        return _words(a)
    return pack(q), pack(z)


def pack_gptq(q: torch.Tensor, z: torch.Tensor, v1: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``q [K, N]``, ``z [G, N]`` -> GPTQ ``qweight [K/8, N]``, ``qzeros [G, N/8]`` (v1: ``z - 1``)."""
    k, n = q.shape
    qw = _words(q.numpy().reshape(k // 8, 8, n).transpose(0, 2, 1))  # [K/8, N, 8] -> [K/8, N]
    zz = (z.to(torch.int16) - (1 if v1 else 0)) & 15
    g = z.shape[0]
    qz = _words(zz.to(torch.uint8).numpy().reshape(g, n // 8, 8))
    return qw, qz


def quantize_rtn(w: torch.Tensor, group: int, sym: bool, g_idx: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``W [N, K]`` -> ``(q [K, N], z [G, N], s fp16 [G, N])`` with ``W ~ (q - z) * s`` per group
    (``g_idx[k]`` is input ``k``'s group; ``k // group`` by default)."""
    n, k = w.shape
    g_idx = torch.arange(k) // group if g_idx is None else g_idx.long()
    G = k // group
    lo = torch.stack([w[:, g_idx == g].amin(1) for g in range(G)], 0).clamp(max=0)  # [G, N]
    hi = torch.stack([w[:, g_idx == g].amax(1) for g in range(G)], 0).clamp(min=0)
    if sym:
        s = (torch.maximum(hi, -lo) / 7.5).clamp(min=1e-6).half()
        z = torch.full_like(s, 8, dtype=torch.uint8)
    else:
        s = ((hi - lo) / 15).clamp(min=1e-6).half()
        z = torch.round(-lo / s.float()).clamp(0, 15).to(torch.uint8)
    sk, zk = s.float()[g_idx], z.float()[g_idx]  # [K, N]
    q = torch.round(w.t() / sk + zk).clamp(0, 15).to(torch.uint8)
    return q.contiguous(), z, s


def write_prequantized(src: str | Path, dst: str | Path, method: str = "awq", group_size: int = 64,
                       checkpoint_format: str = "gptq", sym: bool = False, desc_act: bool = False,
                       seed: int = 0) -> tuple[Path, Path]:
    """Write ``dst`` (``method`` "awq" or "gptq") and its dense twin ``dst + "-dense"`` from the
    single-file safetensors checkpoint ``src``. Returns both paths."""
    from safetensors.torch import load_file, save_file

    from vlkit.layers.prequant import PrequantConfig, dequantize_layer

    src, dst = Path(src), Path(dst)
    twin = dst.parent / f"{dst.name}-dense"
    for d in (dst, twin):
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(src, d)
    state = load_file(str(src / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    cfg = PrequantConfig(method, 4, group_size, sym=sym, desc_act=desc_act, checkpoint_format=checkpoint_format)
    out, dense = {}, {}
    for name, w in state.items():
        if not _LINEAR.search(name) or _VISION.search(name):
            out[name] = dense[name] = w
            continue
        prefix = name[: -len(".weight")]
        w = w.float()
        k = w.shape[1]
        g_idx = None
        if desc_act:
            perm = torch.randperm(k, generator=gen)
            g_idx = (torch.arange(k) // group_size)[torch.argsort(perm)].to(torch.int32)
        q, z, s = quantize_rtn(w, group_size, sym, g_idx)
        if method == "awq":
            qw, qz = pack_awq(q, z)
            parts = {"qweight": qw, "qzeros": qz, "scales": s}
        else:
            qw, qz = pack_gptq(q, z, v1=checkpoint_format == "gptq")
            gi = g_idx if g_idx is not None else (torch.arange(k) // group_size).to(torch.int32)
            parts = {"qweight": qw, "qzeros": qz, "scales": s, "g_idx": gi}
        for suffix, t in parts.items():
            out[f"{prefix}.{suffix}"] = t.contiguous()
        dense[name] = dequantize_layer(cfg, parts).to(torch.float32)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    save_file(dense, str(twin / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    if method == "awq":
        qc = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": None}
    else:
        qc = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "sym": sym, "desc_act": desc_act,
              "damp_percent": 0.01, "static_groups": False, "true_sequential": True}
        if checkpoint_format != "gptq":
            qc["checkpoint_format"] = checkpoint_format
    config["quantization_config"] = qc
    config["torch_dtype"] = "float16"
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst, twin
