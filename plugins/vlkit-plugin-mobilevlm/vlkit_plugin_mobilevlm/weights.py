"""Read only the tensors the vision side needs from a checkpoint directory.

Handles ``model.safetensors`` / ``pytorch_model.bin``, single or sharded with an index. With an
index only the shards holding wanted tensors are opened; safetensors are read tensor by tensor
and ``.bin`` files memory-mapped, so the language model's weights are never materialised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

_INDEX = (("safetensors", "model.safetensors.index.json"), ("bin", "pytorch_model.bin.index.json"))
_SINGLE = (("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin"))


def weight_files(model_dir: Path) -> tuple[str, dict[str, list[str]] | None, list[Path]]:
    """``(kind, tensor names by file or None, files)`` of the weights in ``model_dir``."""
    model_dir = Path(model_dir)
    for kind, name in _INDEX:
        if (model_dir / name).is_file():
            by_file: dict[str, list[str]] = {}
            for tensor, file in json.loads((model_dir / name).read_text())["weight_map"].items():
                by_file.setdefault(file, []).append(tensor)
            return kind, by_file, [model_dir / f for f in sorted(by_file)]
    for kind, name in _SINGLE:
        if (model_dir / name).is_file():
            return kind, None, [model_dir / name]
    found = sorted(model_dir.glob("*.safetensors"))
    if found:
        return "safetensors", None, found
    found = [p for p in sorted(model_dir.glob("*.bin")) if not p.name.startswith("training_args")]
    if found:
        return "bin", None, found
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin weights in {model_dir}")


def read_tensors(model_dir: Path, select: Callable[[str], str | None]) -> dict[str, Any]:
    """``{new_name: tensor}`` for every tensor that ``select(name)`` maps to a name (``None``: skip)."""
    kind, by_file, files = weight_files(model_dir)
    out: dict[str, Any] = {}
    for path in files:
        if by_file is not None and not any(select(n) is not None for n in by_file[path.name]):
            continue
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    new = select(name)
                    if new is not None:
                        out[new] = f.get_tensor(name)
        else:
            for name, tensor in _load_bin(path).items():
                new = select(name)
                if new is not None:
                    out[new] = tensor
    return out


def _load_bin(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        return torch.load(str(path), map_location="cpu", weights_only=True)
