import io

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from vlkit.testing import (
    corrupt_image_bytes,
    data_uri,
    exif_rotated_jpeg,
    image_bytes,
    image_set,
    make_image,
    truncated_image_bytes,
    upright_size,
)

EXPECTED = {
    "square": ((64, 64), "RGB"), "wide": ((300, 120), "RGB"), "tall": ((120, 300), "RGB"),
    "tiny": ((10, 10), "RGB"), "large": ((1000, 700), "RGB"), "rgba": ((80, 60), "RGBA"),
    "grayscale": ((60, 80), "L"), "palette": ((72, 48), "P"), "la": ((50, 50), "LA"),
    "cmyk": ((48, 72), "CMYK"), "i16": ((40, 30), "I;16"), "exif_rotated": ((64, 40), "RGB"),
}


@pytest.fixture(scope="module")
def images():
    return image_set()


def test_image_set_sizes_and_modes(images):
    assert {k: (v.size, v.mode) for k, v in images.items()} == EXPECTED


def test_images_are_textured_distinct_and_deterministic(images):
    digests = set()
    for name, img in images.items():
        arr = np.asarray(img if name == "i16" else img.convert("RGB"))  # PIL clips I;16 -> RGB to white
        assert arr.std() > (2000 if name == "i16" else 10), name
        digests.add(arr.tobytes())
    assert len(digests) == len(images)
    again = image_set()
    for name in images:
        assert np.array_equal(np.asarray(again[name]), np.asarray(images[name]))
    assert not np.array_equal(np.asarray(make_image(32, 32, seed=0)), np.asarray(make_image(32, 32, seed=1)))


def test_alpha_is_really_transparent(images):
    alpha = np.asarray(images["rgba"])[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255
    assert np.asarray(images["la"])[..., 1].min() == 0


def test_i16_uses_the_16_bit_range(images):
    arr = np.asarray(images["i16"])
    assert arr.max() > 255


def test_exif_rotated_jpeg():
    data, upright = exif_rotated_jpeg(64, 40)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.size == (64, 40)
    assert img.getexif()[0x0112] == 6
    assert upright == (40, 64)
    assert ImageOps.exif_transpose(img).size == upright
    assert upright_size(image_set()["exif_rotated"]) == (40, 64)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_image_bytes_decode(images, fmt):
    for name in ("square", "rgba", "palette"):
        img = Image.open(io.BytesIO(image_bytes(images[name], fmt)))
        img.load()
        assert img.format == fmt and img.size == images[name].size


def test_data_uri(images):
    import base64

    uri = data_uri(images["tiny"])
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert np.array_equal(np.asarray(img), np.asarray(images["tiny"]))
    assert data_uri(images["tiny"], "jpeg").startswith("data:image/jpeg;base64,")


def test_corrupt_and_truncated_bytes_fail():
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(corrupt_image_bytes()))
    img = Image.open(io.BytesIO(truncated_image_bytes()))
    with pytest.raises(OSError):
        img.load()
