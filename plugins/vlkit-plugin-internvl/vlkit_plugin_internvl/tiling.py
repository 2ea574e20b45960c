"""InternVL's dynamic tiling (the original ``dynamic_preprocess``), and its pixel normalisation.

The grid is the ``(columns, rows)`` with ``min_tiles <= columns * rows <= max_tiles`` whose
aspect ratio is closest to the image's. Candidates are visited by increasing tile count; on a
tie the later (larger) grid replaces the best one only when the image's area exceeds half of
the grid's pixel area. The image is resized (bicubic) to the grid, cut row-major into square
tiles, and, when there is more than one tile and thumbnails are on, the whole image resized to
one tile is appended last.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """``(columns, rows)`` grids in the order the original visits them.

    The original builds a ``set`` and sorts it by tile count; grids of equal count keep the
    set's iteration order, which for small int tuples is fixed by their hashes. Reproduce it by
    building the same set.
    """
    grids = {
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    }
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """``(columns, rows)`` for an image of ``width`` x ``height`` pixels."""
    if max_tiles < 1 or min_tiles < 1 or min_tiles > max_tiles:
        raise ValueError(f"tile counts must satisfy 1 <= min ({min_tiles}) <= max ({max_tiles})")
    ratio = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(ratio - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def num_tiles(width: int, height: int, tile: int, min_tiles: int, max_tiles: int, thumbnail: bool) -> int:
    cols, rows = choose_grid(width, height, tile, min_tiles, max_tiles)
    n = cols * rows
    return n + 1 if thumbnail and n > 1 else n


def tile_image(image: Any, tile: int, min_tiles: int, max_tiles: int, thumbnail: bool) -> list[Any]:
    """The PIL tiles of ``image``, row-major, thumbnail last."""
    from PIL import Image

    w, h = image.size
    cols, rows = choose_grid(w, h, tile, min_tiles, max_tiles)
    resized = image.resize((cols * tile, rows * tile), Image.BICUBIC)
    tiles = [
        resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)) for r in range(rows) for c in range(cols)
    ]
    if thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile, tile), Image.BICUBIC))
    return tiles


def to_pixels(tiles: list[Any], tile: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> Any:
    """``[len(tiles), 3, tile, tile]`` float32: each tile resized to ``tile`` (bicubic; a no-op for
    tiles already that size), scaled to [0, 1] and normalised."""
    import numpy as np
    import torch
    from PIL import Image

    arrs = []
    for t in tiles:
        t = t.convert("RGB") if t.mode != "RGB" else t
        if t.size != (tile, tile):
            t = t.resize((tile, tile), Image.BICUBIC)
        arrs.append(np.asarray(t, dtype=np.uint8))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s
