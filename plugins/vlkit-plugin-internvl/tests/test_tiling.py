"""Dynamic tiling against the original ``dynamic_preprocess`` (transcribed in internvl_reference)
and transformers' GotOcr2 image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from internvl_reference import build_transform, dynamic_preprocess, find_closest_aspect_ratio
from PIL import Image
from vlkit_plugin_internvl import tiling

SIZES = [(w, h) for w in (1, 7, 28, 55, 56, 57, 100, 111, 112, 168, 300, 448, 1000) for h in (1, 9, 28, 56, 80, 112, 224, 500)]


@pytest.mark.parametrize("max_num", [1, 2, 6, 12])
def test_grid_matches_original(max_num):
    # the original's candidate list and choice (dynamic_preprocess without the resizing)
    ratios = sorted({(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if 1 <= i * j <= max_num}, key=lambda x: x[0] * x[1])
    for w, h in SIZES:
        for tile in (28, 56, 448):
            grid = find_closest_aspect_ratio(w / h, ratios, w, h, tile)
            assert tiling.choose_grid(w, h, tile, 1, max_num) == grid, (w, h, tile, max_num)
            n = grid[0] * grid[1]
            assert tiling.num_tiles(w, h, tile, 1, max_num, True) == (n + 1 if n > 1 else n)


def test_tile_count_matches_original_dynamic_preprocess():
    for w, h in ((1, 1), (57, 9), (300, 80), (111, 500)):
        img = Image.new("RGB", (w, h))
        assert tiling.num_tiles(w, h, 28, 1, 6, True) == len(dynamic_preprocess(img, 1, 6, 28, use_thumbnail=True))


def test_tie_break_prefers_larger_grid_only_for_large_images():
    # a square image ties (1,1), (2,2), (3,3): the larger grid wins only if the image area > half of it
    assert tiling.choose_grid(56, 56, 56, 1, 12) == (1, 1)
    assert tiling.choose_grid(100, 100, 56, 1, 12) == (2, 2)  # 10000 > 0.5 * 56² * 4
    assert tiling.choose_grid(1000, 1000, 56, 1, 12) == (3, 3)
    assert tiling.choose_grid(1000, 500, 56, 1, 12) == (2, 1) or tiling.choose_grid(1000, 500, 56, 1, 12) == (4, 2)


def test_tiles_and_pixels_match_original():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (70, 190, 3), dtype=np.uint8))
    ours = tiling.tile_image(img, 56, 1, 6, True)
    theirs = dynamic_preprocess(img, 1, 6, 56, True)
    assert len(ours) == len(theirs) == 4  # 3 x 1 grid + thumbnail
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    px = tiling.to_pixels(ours, 56)
    ref = torch.stack([build_transform(t, 56) for t in theirs])
    assert torch.allclose(px, ref, atol=1e-6)


def test_matches_transformers_image_processor():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    proc = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, max_patches=6,
                                    image_mean=list(tiling.IMAGENET_MEAN), image_std=list(tiling.IMAGENET_STD))
    rng = np.random.default_rng(1)
    for w, h in ((190, 70), (40, 150), (64, 64), (300, 120), (9, 7)):
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out = proc(images=[img], return_tensors="pt")
        px = tiling.to_pixels(tiling.tile_image(img, 56, 1, 6, True), 56)
        assert int(out["num_patches"][0]) == px.shape[0]
        assert torch.allclose(torch.as_tensor(out["pixel_values"]), px, atol=1e-5)


def test_bad_tile_range():
    with pytest.raises(ValueError, match="min"):
        tiling.choose_grid(10, 10, 56, 3, 2)
