"""Vision towers plugins share, as plain ``torch.nn`` modules with transformers' parameter names.

A family plugin builds its VisionModel from these (and its own projector), so that a tower is
written, tested and made fast once: :mod:`vlkit.towers.clip` (LLaVA, MobileVLM).
:func:`resolve_tower` finds the tower a checkpoint names (LLaVA's ``mm_vision_tower``).
"""

from __future__ import annotations

import os
from pathlib import Path


def resolve_tower(name: str, model_path: str | os.PathLike[str], *, need_weights: bool = True,
                  field: str = "mm_vision_tower") -> Path:
    """A local directory for a vision tower that a checkpoint names in its config (``field``).

    An existing directory as given (absolute, ``~``, relative to the working directory) or
    relative to the checkpoint; else a hub id, of which only the config and image-processor
    files are fetched, plus the weights (safetensors, else ``.bin``) when ``need_weights``
    (a checkpoint that carries its fine-tuned tower needs only the configs).

    :raises FileNotFoundError: naming ``field``, the value and the checkpoint.
    """
    for candidate in (Path(name).expanduser(), Path(model_path) / name):
        if candidate.is_dir():
            return candidate.absolute()
    if not name or name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise FileNotFoundError(f"{field} {name!r} of {model_path} is not a directory (the tower's config and "
                                "image processor are read from there)")
    try:
        from huggingface_hub import snapshot_download

        files = ["*.json", "*.txt"]
        path = Path(snapshot_download(name, allow_patterns=files + (["*.safetensors"] if need_weights else [])))
        if need_weights and not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(name, allow_patterns=files + ["*.bin"]))
        return path
    except Exception as exc:
        raise FileNotFoundError(
            f"{field} {name!r} of {model_path} is neither a local directory nor a reachable hub id "
            f"({type(exc).__name__}: {exc})"
        ) from exc
