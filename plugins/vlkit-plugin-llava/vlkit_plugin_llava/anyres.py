"""LLaVA-NeXT "anyres" arithmetic: best grid resolution, resize size, unpadding, token counts.

Everything is in (height, width) order; the original code's (width, height) pinpoints are
converted when the config is read (:mod:`vlkit_plugin_llava.layout`). The same functions count
tokens in ``preprocess`` and slice features in ``forward``, so the two always agree.
"""

from __future__ import annotations

import math

from vlkit_plugin_llava.layout import LlavaLayout


def select_best_resolution(height: int, width: int, pinpoints: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """The pinpoint ``(H, W)`` keeping the most of the image's pixels, then wasting the fewest.

    Ties keep the first pinpoint in config order (as both transformers and the original do).
    """
    best: tuple[int, int] | None = None
    best_effective, best_wasted = 0, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        down_w, down_h = int(width * scale), int(height * scale)
        effective = min(down_w * down_h, width * height)
        wasted = ph * pw - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (ph, pw), effective, wasted
    if best is None:
        raise ValueError(f"no anyres pinpoint fits an image of {width}x{height}")
    return best


def fit_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """``(h, w)`` of the image resized to fit in ``target`` keeping its aspect ratio (ceil)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def grid_shape(height: int, width: int, layout: LlavaLayout, tile: int) -> tuple[int, int]:
    """``(rows, cols)`` of tiles of size ``tile`` the image is cut into."""
    best_h, best_w = select_best_resolution(height, width, layout.pinpoints)
    return best_h // tile, best_w // tile


def unpad_bounds(
    orig_h: int, orig_w: int, cur_h: int, cur_w: int, rounding: str
) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the feature grid ``cur_h x cur_w`` that shows image.

    The image was resized to fit the grid's resolution and centred, so padding rows (or
    columns) are cut equally from both sides. ``rounding`` is ``"round"`` (transformers:
    ``int(round(x, 7))``) or ``"trunc"`` (the original LLaVA: ``int(x)``).
    """
    def to_int(x: float) -> int:
        return int(round(x, 7)) if rounding == "round" else int(x)

    if orig_w / orig_h > cur_w / cur_h:
        new_h = to_int(orig_h * (cur_w / orig_w))
        pad = (cur_h - new_h) // 2
        return pad, cur_h - pad, 0, cur_w
    new_w = to_int(orig_w * (cur_h / orig_h))
    pad = (cur_w - new_w) // 2
    return 0, cur_h, pad, cur_w - pad


def tokens_per_tile(layout: LlavaLayout, image_size: int, patch_size: int) -> int:
    side = image_size // patch_size
    return side * side + (0 if layout.drop_cls else 1)


def num_image_tokens(
    layout: LlavaLayout, height: int, width: int, image_size: int, patch_size: int
) -> tuple[int, dict]:
    """Prompt positions one ``height x width`` image fills, and facts about its tiling."""
    per_tile = tokens_per_tile(layout, image_size, patch_size)
    if not layout.anyres:
        return per_tile, {"tiles": 1}
    rows, cols = grid_shape(height, width, layout, image_size)
    meta = {"tiles": 1 + rows * cols, "grid": (rows, cols)}
    if layout.merge in ("flat", "spatial"):
        return per_tile * (1 + rows * cols), meta
    side = image_size // patch_size
    top, bottom, left, right = unpad_bounds(height, width, rows * side, cols * side, layout.unpad_rounding)
    h, w = bottom - top, right - left
    meta["unpadded"] = (h, w)
    return per_tile + h * w + (h if layout.newline else 0), meta
