"""The vision tower's tensors of a Qwen2-VL checkpoint (read with :func:`vlkit.engine.loader.read_tensors`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import read_tensors

# checkpoint prefix of the vision tower: Qwen's own layout (and transformers < 4.52 / >= 5 on
# save) uses ``visual.``; transformers 4.52-4.x saved ``model.visual.``
VISION_PREFIXES = ("visual.", "model.visual.")


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
