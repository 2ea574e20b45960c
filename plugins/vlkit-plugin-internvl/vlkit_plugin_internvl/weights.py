"""Which checkpoint tensors the vision side needs, and both layouts mapped onto one set of names.

Reading them is :func:`vlkit.engine.loader.read_tensors` (only the shards holding wanted tensors are
opened; the language model is never loaded).

Target names are :class:`vlkit_plugin_internvl.modeling.InternVLVision`'s (the original layout
without ``vision_model.`` being special). transformers' layout is mapped as its conversion does:
``cls_token`` -> ``class_embedding``, ``attention.{q,k,v}_proj`` -> one ``attn.qkv`` (rows
``[Q; K; V]``), ``lambda_1/2`` -> ``ls1/2``, ``layernorm_before/after`` -> ``norm1/2``,
``multi_modal_projector.{layer_norm,linear_1,linear_2}`` -> ``mlp1.{0,1,3}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# -- original layout ---------------------------------------------------------------------------
ORIGINAL_PREFIXES = ("vision_model.", "mlp1.")


def original_names(tensors: dict[str, Any]) -> dict[str, Any]:
    return dict(tensors)


# -- transformers layout ------------------------------------------------------------------------
HF_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector.")

_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_LAYER_RENAMES = {
    "attention.projection_layer.": "attn.proj.",
    "attention.q_norm.": "attn.q_norm.",
    "attention.k_norm.": "attn.k_norm.",
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
_HF_TOP = {
    "embeddings.cls_token": "embeddings.class_embedding",
    "embeddings.patch_embeddings.projection.weight": "embeddings.patch_embedding.weight",
    "embeddings.patch_embeddings.projection.bias": "embeddings.patch_embedding.bias",
    "embeddings.position_embeddings": "embeddings.position_embedding",
    "layernorm.weight": "final_norm.weight",
    "layernorm.bias": "final_norm.bias",
}
_HF_PROJ = {"layer_norm.": "mlp1.0.", "linear_1.": "mlp1.1.", "linear_2.": "mlp1.3."}


def hf_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """transformers' names -> ours; q/k/v projections are concatenated into ``qkv``."""
    import torch

    out: dict[str, Any] = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    for name, t in tensors.items():
        for prefix in ("model.vision_tower.", "vision_tower."):
            if name.startswith(prefix):
                rest = name[len(prefix):]
                m = _HF_LAYER.match(rest)
                if m:
                    idx, tail = int(m.group(1)), m.group(2)
                    base = f"vision_model.encoder.layers.{idx}."
                    qm = re.match(r"attention\.([qkv])_proj\.(weight|bias)$", tail)
                    if qm:
                        qkv.setdefault((idx, qm.group(2)), {})[qm.group(1)] = t
                    elif tail in ("lambda_1", "lambda_2"):
                        out[base + ("ls1" if tail == "lambda_1" else "ls2")] = t
                    else:
                        for src, dst in _HF_LAYER_RENAMES.items():
                            if tail.startswith(src):
                                out[base + dst + tail[len(src):]] = t
                                break
                        else:
                            out[base + tail] = t  # unknown: reported as unexpected by the caller
                elif rest in _HF_TOP:
                    out["vision_model." + _HF_TOP[rest]] = t
                else:
                    out["vision_model." + rest] = t
                break
        else:
            for prefix in ("model.multi_modal_projector.", "multi_modal_projector."):
                if name.startswith(prefix):
                    rest = name[len(prefix):]
                    for src, dst in _HF_PROJ.items():
                        if rest.startswith(src):
                            out[dst + rest[len(src):]] = t
                            break
                    else:
                        out["mlp1." + rest] = t
                    break
    for (idx, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise KeyError(f"vision layer {idx}: attention {kind} lacks {missing}_proj")
        out[f"vision_model.encoder.layers.{idx}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def wanted_for(kind: str, num_layers_used: int) -> Callable[[str], bool]:
    """Which checkpoint tensors the vision side reads (layers past the used one are skipped)."""
    prefixes = ORIGINAL_PREFIXES if kind == "original" else HF_PREFIXES
    layer_re = re.compile(r"\.(?:layers|layer)\.(\d+)\.")

    def wanted(name: str) -> bool:
        if not name.startswith(prefixes):
            return False
        m = layer_re.search(name)
        return m is None or int(m.group(1)) < num_layers_used

    return wanted
