"""The precisions ``vlkit bench`` runs at: EngineConfig fields for vlkit, the dtype for HF peers."""

from __future__ import annotations

from typing import Any

PRECISIONS: dict[str, dict[str, Any]] = {
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "int8": {"dtype": "bfloat16", "quantization": "int8"},
    "int4": {"dtype": "bfloat16", "quantization": "int4"},
    "int4-asym": {"dtype": "bfloat16", "quantization": "int4-asym"},
}


def engine_kwargs(precision: str) -> dict[str, Any]:
    """``EngineConfig`` fields of a precision name (int* run with bf16 activations)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return dict(PRECISIONS[precision])


def hf_dtype(precision: str):
    """The dtype HF peers run at for a precision (bf16 for the int ones: their activations)."""
    import torch

    return torch.float32 if precision == "fp32" else torch.bfloat16
