"""Read only the tensors the vision side needs from a checkpoint directory.

``model.safetensors`` (or any ``*.safetensors``), ``model.safetensors.index.json`` with shards,
``pytorch_model.bin`` and ``pytorch_model.bin.index.json`` with shards (the original
DeepSeek-VL checkpoints are ``.bin`` shards). With an index only the shards holding wanted
tensors are opened; safetensors are read tensor by tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _files(model_dir: Path) -> tuple[str, dict[str, list[str]] | None, list[Path]]:
    for kind, index in (("safetensors", "model.safetensors.index.json"), ("bin", "pytorch_model.bin.index.json")):
        p = model_dir / index
        if p.is_file():
            by_file: dict[str, list[str]] = {}
            for tensor, file in json.loads(p.read_text())["weight_map"].items():
                by_file.setdefault(file, []).append(tensor)
            return kind, by_file, [model_dir / f for f in sorted(by_file)]
    st = sorted(model_dir.glob("*.safetensors"))
    if st:
        return "safetensors", None, st
    bins = [p for p in sorted(model_dir.glob("*.bin")) if not p.name.startswith("training_args")]
    if bins:
        return "bin", None, bins
    raise FileNotFoundError(f"no safetensors or pytorch_model.bin weights in {model_dir}")


def read_tensors(model_dir: str | Path, select: Callable[[str], str | None]) -> dict[str, Any]:
    """``{select(name): tensor}`` for every checkpoint tensor ``select`` does not map to ``None``."""
    kind, by_file, files = _files(Path(model_dir))
    out: dict[str, Any] = {}
    for path in files:
        if by_file is not None and all(select(n) is None for n in by_file[path.name]):
            continue
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    new = select(name)
                    if new is not None:
                        out[new] = f.get_tensor(name)
        else:
            import torch

            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            for name, t in state.items():
                new = select(name)
                if new is not None:
                    out[new] = t
            del state
    return out
