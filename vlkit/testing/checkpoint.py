"""Writers for the files of a Hugging Face model repository, in their exact on-disk format.

Weights: ``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` shards with
``model.safetensors.index.json`` (metadata ``{"format": "pt"}`` in every file, as
``save_pretrained`` writes), or ``pytorch_model.bin`` / ``pytorch_model-0000i-of-0000N.bin``
with ``pytorch_model.bin.index.json``. Config files: ``config.json``,
``preprocessor_config.json``, and the chat template as transformers 5 writes it
(``chat_template.jinja``) and as older repositories carry it (``tokenizer_config.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "legacy_config",
    "random_state_dict",
    "write_bin",
    "write_chat_template",
    "write_config",
    "write_json",
    "write_preprocessor_config",
    "write_safetensors",
]

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _dir(directory) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path, data: Mapping[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def write_config(directory, config: Mapping[str, Any]) -> Path:
    """Write ``config.json`` (a dict, or anything with ``to_dict()`` such as a transformers config)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return write_json(_dir(directory) / "config.json", dict(config))


def write_preprocessor_config(directory, config: Mapping[str, Any]) -> Path:
    """Write ``preprocessor_config.json`` (e.g. ``{"image_processor_type": "CLIPImageProcessor", ...}``)."""
    return write_json(_dir(directory) / "preprocessor_config.json", dict(config))


def write_chat_template(directory, template: str) -> Path:
    """Write the chat template where both generations of transformers look for it.

    transformers 5 ``save_pretrained`` (tokenizer and processor) writes ``chat_template.jinja``;
    repositories saved with transformers 4 keep it as ``chat_template`` in
    ``tokenizer_config.json``. Both are written (the config is updated in place when present).
    """
    d = _dir(directory)
    (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return d


def legacy_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers-5 config dict in the spelling of checkpoints saved with transformers 4.

    ``rope_parameters`` becomes ``rope_theta`` + ``rope_scaling`` (None for the default RoPE)
    and ``dtype`` becomes ``torch_dtype``; nested ``*_config`` dicts are converted too.
    """
    out = dict(config)
    rope = out.pop("rope_parameters", None)
    if isinstance(rope, dict):
        rope = dict(rope)
        out["rope_theta"] = rope.pop("rope_theta", out.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", "default")
        if rope_type == "default" and set(rope) <= {"rope_type"}:
            out.setdefault("rope_scaling", None)
        else:
            if rope_type != "default":
                rope.setdefault("type", rope_type)
            out["rope_scaling"] = rope
    if "dtype" in out:
        out["torch_dtype"] = out.pop("dtype")
    for k, v in list(out.items()):
        if k.endswith("_config") and isinstance(v, dict):
            out[k] = legacy_config(v)
    return out


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", str(size).upper())
    if not m:
        raise ValueError(f"cannot parse shard size {size!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _prepare(state_dict: Mapping[str, Any], dtype=None) -> dict[str, Any]:
    """Own, contiguous copies (safetensors refuses shared storage, e.g. tied embeddings)."""
    out = {}
    for k, t in state_dict.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[k] = t.contiguous().clone()
    return out


def _split(state_dict: Mapping[str, Any], max_shard_size=None, shards: int | None = None) -> list[list[str]]:
    """Split keys (in insertion order) into shards, HF-style: a new shard starts when adding a
    tensor would pass ``max_shard_size``; or into ``shards`` groups of about equal bytes."""
    keys = list(state_dict)
    sizes = {k: state_dict[k].numel() * state_dict[k].element_size() for k in keys}
    if shards is not None:
        shards = max(1, min(int(shards), len(keys)))
        target = sum(sizes.values()) / shards
        groups: list[list[str]] = [[]]
        acc = 0
        for k in keys:
            if groups[-1] and len(groups) < shards and acc >= target * len(groups):
                groups.append([])
            groups[-1].append(k)
            acc += sizes[k]
        while len(groups) < shards:  # a big tensor swallowed a shard's worth: split by count
            i = max(range(len(groups)), key=lambda j: len(groups[j]))
            g = groups[i]
            groups[i:i + 1] = [g[: len(g) // 2], g[len(g) // 2:]]
        return groups
    if max_shard_size is None:
        return [keys]
    limit = _parse_size(max_shard_size)
    groups, cur = [[]], 0
    for k in keys:
        if groups[-1] and cur + sizes[k] > limit:
            groups.append([])
            cur = 0
        groups[-1].append(k)
        cur += sizes[k]
    return groups


def _index(groups: list[list[str]], sd, name_of) -> dict[str, Any]:
    total = sum(t.numel() * t.element_size() for t in sd.values())
    params = sum(t.numel() for t in sd.values())
    weight_map = {k: name_of(i) for i, g in enumerate(groups) for k in g}
    return {"metadata": {"total_parameters": params, "total_size": total},
            "weight_map": dict(sorted(weight_map.items()))}


def write_safetensors(directory, state_dict: Mapping[str, Any], *, max_shard_size=None, shards: int | None = None,
                      dtype=None, prefix: str = "model") -> list[Path]:
    """Write ``model.safetensors``, or shards ``model-0000i-of-0000N.safetensors`` plus
    ``model.safetensors.index.json`` when ``max_shard_size`` (bytes or ``"200KB"``) or
    ``shards`` (a count) asks for more than one file. ``dtype`` casts floating tensors.
    Returns the weight files written."""
    from safetensors.torch import save_file

    d = _dir(directory)
    sd = _prepare(state_dict, dtype)
    groups = _split(sd, max_shard_size, shards)
    n = len(groups)
    if n == 1:
        path = d / f"{prefix}.safetensors"
        save_file(sd, str(path), metadata={"format": "pt"})
        return [path]

    def name_of(i):
        return f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors"

    paths = []
    for i, g in enumerate(groups):
        paths.append(d / name_of(i))
        save_file({k: sd[k] for k in g}, str(paths[-1]), metadata={"format": "pt"})
    write_json(d / f"{prefix}.safetensors.index.json", _index(groups, sd, name_of))
    return paths


def write_bin(directory, state_dict: Mapping[str, Any], shards: int | None = None, *, max_shard_size=None,
              dtype=None) -> list[Path]:
    """Write ``pytorch_model.bin`` (``torch.save`` of the state dict), or ``shards`` files
    ``pytorch_model-0000i-of-0000N.bin`` with ``pytorch_model.bin.index.json``."""
    import torch

    d = _dir(directory)
    sd = _prepare(state_dict, dtype)
    groups = _split(sd, max_shard_size, shards)
    n = len(groups)
    if n == 1:
        path = d / "pytorch_model.bin"
        torch.save(sd, path)
        return [path]

    def name_of(i):
        return f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"

    paths = []
    for i, g in enumerate(groups):
        paths.append(d / name_of(i))
        torch.save({k: sd[k] for k in g}, paths[-1])
    write_json(d / "pytorch_model.bin.index.json", _index(groups, sd, name_of))
    return paths


def random_state_dict(model, seed: int = 0, *, std: float = 0.2) -> dict[str, Any]:
    """Deterministic random weights for every floating tensor of ``model`` (an ``nn.Module``
    or a state dict), independent of how the module was initialised.

    Tensors sharing storage (tied embeddings) get the same value. Tensors are visited in sorted-name order from one generator seeded with ``seed``:
    matrices ~ N(0, std) (0.2 keeps a 64-wide model's logits spread out, std about 1.6, so
    greedy decoding does not collapse onto one token as it does at HF's 0.02), 1-D ``*weight`` (norm scales) ~ 1 + N(0, 0.05), other 1-D
    tensors (biases) ~ N(0, 0.02). Non-floating tensors (buffers) are copied unchanged."""
    import torch

    sd = model.state_dict() if hasattr(model, "state_dict") else dict(model)
    g = torch.Generator().manual_seed(int(seed))
    out: dict[str, Any] = {}
    first_of: dict[int, str] = {}  # tied weights (shared storage) get one value
    for name in sd:
        if sd[name].numel():
            first_of.setdefault(sd[name].data_ptr(), name)
    for name in sorted(sd):
        t = sd[name]
        if not t.is_floating_point():
            out[name] = t.clone()
            continue
        owner = first_of.get(t.data_ptr(), name) if t.numel() else name
        if owner != name:
            continue
        noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if t.dim() >= 2:
            v = noise * std
        elif name.endswith("weight"):
            v = 1.0 + noise * 0.05
        else:
            v = noise * 0.02
        out[name] = v.to(t.dtype)
    for name in sd:
        if name not in out:
            out[name] = out[first_of[sd[name].data_ptr()]]
    return {k: out[k] for k in sd}
