"""Image preprocessing steps that several families share (no torch import).

* :func:`expand_to_square`: LLaVA's ``expand2square`` (LLaVA 1.5 ``pad``, MobileVLM, ...).
* :func:`clip_image_processor`: the tower's ``CLIPImageProcessor`` with the PIL backend, the
  one the original LLaVA-style code ran (the torchvision one resizes slightly differently).
* :func:`crop_size`: the square side an image processor crops or resizes to.
"""

from __future__ import annotations

import os
from typing import Any


def expand_to_square(image: Any, background: tuple[int, ...]) -> Any:
    """The PIL ``image`` centred on a square canvas of its longer side, filled with ``background``."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def clip_image_processor(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Any:
    """transformers' PIL-backend ``CLIPImageProcessor``, from ``path`` when given, else built
    from ``kwargs`` (``size=``, ``crop_size=``...)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls.from_pretrained(str(path), **kwargs) if path is not None else cls(**kwargs)


def crop_size(proc: Any) -> int:
    """The side, in pixels, of the square images ``proc`` produces (its crop size, else its size)."""
    crop = getattr(proc, "crop_size", None)
    if isinstance(crop, dict) and crop.get("height"):
        return int(crop["height"])
    if getattr(crop, "height", None):
        return int(crop.height)
    size = getattr(proc, "size", None) or {}
    if isinstance(size, dict):
        return int(size.get("shortest_edge") or size.get("height"))
    return int(getattr(size, "shortest_edge", None) or size.height)
