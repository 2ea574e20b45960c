"""Reading only the vision tensors of a checkpoint (safetensors single/sharded, or ``.bin``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

_INDEX = (("safetensors", "model.safetensors.index.json"), ("bin", "pytorch_model.bin.index.json"))
_SINGLE = (("safetensors", "model.safetensors"), ("bin", "pytorch_model.bin"))

# checkpoint prefix of the vision tower: Qwen's own layout (and transformers < 4.52 / >= 5 on
# save) uses ``visual.``; transformers 4.52-4.x saved ``model.visual.``
VISION_PREFIXES = ("visual.", "model.visual.")


def weight_files(model_dir: Path) -> tuple[str, dict[str, list[str]] | None, list[Path]]:
    """``(kind, {file: [tensor names]} or None, files)``."""
    model_dir = Path(model_dir)
    for kind, name in _INDEX:
        if (model_dir / name).is_file():
            wmap: dict[str, str] = json.loads((model_dir / name).read_text())["weight_map"]
            by_file: dict[str, list[str]] = {}
            for tensor, file in wmap.items():
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
    raise FileNotFoundError(f"no safetensors or pytorch_model.bin weights in {model_dir}")


def read_tensors(model_dir: Path, wanted: Callable[[str], bool]) -> dict[str, Any]:
    """``{name: tensor}`` of the checkpoint tensors for which ``wanted(name)``; shards holding
    none of them are not opened."""
    kind, by_file, files = weight_files(model_dir)
    out: dict[str, Any] = {}
    for path in files:
        if by_file is not None and not any(wanted(n) for n in by_file[path.name]):
            continue
        if kind == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if wanted(name):
                        out[name] = f.get_tensor(name)
        else:
            import torch

            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy serialization cannot be memory-mapped
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            out.update({k: v for k, v in state.items() if wanted(k)})
            del state
    return out


def vision_tensors(model_dir: Path) -> dict[str, Any]:
    """The vision tower's tensors named as in ``visual.*`` with the prefix dropped."""
    raw = read_tensors(model_dir, lambda n: n.startswith(VISION_PREFIXES))
    out: dict[str, Any] = {}
    for name, t in raw.items():
        for p in ("model.visual.", "visual."):
            if name.startswith(p):
                out[name[len(p):]] = t
                break
    return out
