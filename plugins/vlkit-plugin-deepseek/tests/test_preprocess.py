"""The original layout's preprocessing against an independent reading of the original
``VLMImageProcessor`` (vlkit_plugin_deepseek.testing.original_pixels), and where it differs
from transformers' DeepseekVL image processor."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from vlkit_plugin_deepseek.testing import original_pixels
from vlkit_plugin_deepseek.vision import OriginalImageProcessor

from vlkit.testing.images import make_image

SIZES = [(64, 64), (300, 120), (120, 300), (10, 10), (1000, 7), (33, 97), (1000, 700)]


@pytest.mark.parametrize("cfg", ["orig13", "orig7"])
@pytest.mark.parametrize("size", SIZES)
def test_matches_original_code(ckpts, cfg, size):
    pre = json.loads((ckpts[cfg] / "preprocessor_config.json").read_text())
    img = make_image(*size, seed=size[0])
    ours = OriginalImageProcessor.from_pretrained(ckpts[cfg])(img)
    ref = original_pixels(img, pre)
    assert ours.shape == (3, pre["image_size"], pre["image_size"])
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_short_side_truncated_with_floor_and_mean_colour_padding():
    p = OriginalImageProcessor(image_size=64, image_mean=[0.5, 0.25, 1.0], image_std=[1, 1, 1], do_normalize=False)
    assert p.resized_size(300, 120) == (64, 25)  # 25.6 truncated (transformers rounds to 26)
    assert p.resized_size(120, 300) == (25, 64)
    assert p.resized_size(1000, 7) == (64, 14)  # min_size floor
    assert p.background_color == (127, 63, 255)
    x = p(Image.new("RGB", (300, 120), (0, 0, 0)))
    assert torch.allclose(x[:, 0, 0], torch.tensor([127, 63, 255]) / 255)  # padding
    assert torch.allclose(x[:, 32, 32], torch.zeros(3))  # the image, centred
    assert torch.allclose(x[:, 18, 32], torch.tensor([127, 63, 255]) / 255)  # rows 0..18 are padding
    assert torch.allclose(x[:, 19, 32], torch.zeros(3))  # (64 - 25) // 2 = 19 padded rows above
    assert OriginalImageProcessor(image_size=32, image_mean=None).background_color == (127, 127, 127)


def test_transformers_processor_rounds_where_the_original_truncates(ckpts):
    """Why the original layout has its own preprocessing (FAMILIES.md)."""
    from transformers import DeepseekVLImageProcessorPil

    img = make_image(100, 55, seed=5)  # 17.6 px high at 32: the original keeps 17, transformers 18
    hf = DeepseekVLImageProcessorPil.from_pretrained(ckpts["hf"])(images=[img], return_tensors="pt")["pixel_values"][0]
    ours = OriginalImageProcessor.from_pretrained(ckpts["orig13"])(img)
    assert hf.shape == ours.shape
    assert not torch.allclose(hf, ours)
