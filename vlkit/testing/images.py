"""Deterministic test images: every size, aspect ratio and PIL mode a pipeline meets.

Images are textured (gradients, stripes, seeded noise and a few shapes), so two seeds or
two sizes never give the same pixels and a preprocessing bug (a swapped axis, a wrong crop)
changes the embeddings. No files are read; everything is generated in memory.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw, ImageOps

__all__ = [
    "corrupt_image_bytes",
    "data_uri",
    "exif_rotated_jpeg",
    "image_bytes",
    "image_set",
    "make_image",
    "truncated_image_bytes",
    "upright_size",
]

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp",
         "TIFF": "image/tiff"}


def _rgb_array(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fx, fy = rng.uniform(0.05, 0.4, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    r = 127 + 100 * np.sin(x * fx + phase[0]) * np.cos(y * fy * 0.5)
    g = 255 * (x + y) / max(1.0, width + height - 2)
    b = 127 + 100 * np.sin((x - y) * (fx + fy) * 0.5 + phase[2])
    arr = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, size=(height, width, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A textured ``width`` x ``height`` image in ``mode`` (any PIL mode ``convert`` reaches, plus
    ``"I;16"``). RGBA/LA images have a transparent corner and an alpha gradient; ``"P"`` is
    a quantized palette image."""
    if width < 1 or height < 1:
        raise ValueError("width and height must be positive")
    img = Image.fromarray(_rgb_array(width, height, seed))
    rng = np.random.RandomState(seed + 7919)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, x1 = sorted(rng.randint(0, width, size=2))
        y0, y1 = sorted(rng.randint(0, height, size=2))
        color = tuple(int(c) for c in rng.randint(0, 256, size=3))
        if rng.rand() < 0.5:
            draw.rectangle([x0, y0, x1, y1], outline=color, width=max(1, min(width, height) // 30))
        else:
            draw.ellipse([x0, y0, x1, y1], fill=color)
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA"):
        alpha = np.tile(np.linspace(255, 0, width, dtype=np.float32), (height, 1))
        alpha[: height // 3, : width // 3] = 0  # fully transparent corner
        base = img.convert("RGB" if mode == "RGBA" else "L")
        base.putalpha(Image.fromarray(alpha.astype(np.uint8)))
        return base
    if mode == "P":
        return img.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    if mode == "I;16":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        return Image.frombytes("I;16", (width, height), gray.astype("<u2").tobytes())
    return img.convert(mode)


def image_bytes(img: Image.Image, fmt: str = "PNG", **save_kwargs) -> bytes:
    """Encode ``img`` (``fmt``: PNG, JPEG, WEBP, GIF, BMP, TIFF...). JPEG of an image with
    alpha or a palette is converted to RGB first, as JPEG cannot store them."""
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    """``data:image/png;base64,...`` for ``img``."""
    fmt = "JPEG" if fmt.upper() == "JPG" else fmt.upper()
    mime = _MIME.get(fmt, f"image/{fmt.lower()}")
    return f"data:{mime};base64," + base64.b64encode(image_bytes(img, fmt)).decode("ascii")


def exif_rotated_jpeg(width: int = 64, height: int = 40, seed: int = 0) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes whose pixels are stored ``width`` x ``height`` with EXIF Orientation=6 (the
    camera was turned: display rotated 90 degrees clockwise), and the upright size
    ``(height, width)`` that ``PIL.ImageOps.exif_transpose`` gives."""
    img = make_image(width, height, "RGB", seed)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    return image_bytes(img, "JPEG", exif=exif.tobytes(), quality=95), (height, width)


def image_set(seed: int = 0) -> dict[str, Image.Image]:
    """Named cases, all distinct in content:

    ``square`` 64x64 RGB, ``wide`` 300x120, ``tall`` 120x300, ``tiny`` 10x10, ``large``
    1000x700, ``rgba`` (transparent corner), ``grayscale`` (``"L"``), ``palette`` (``"P"``),
    ``la``, ``cmyk``, ``i16`` (``"I;16"``) and ``exif_rotated``: a JPEG opened from
    :func:`exif_rotated_jpeg` bytes, stored 64x40 with Orientation=6, upright 40x64
    (``ImageOps.exif_transpose(img).size``). The EXIF image is lazily decoded, as a
    file opened by a user would be; the others are loaded images."""
    data, _ = exif_rotated_jpeg(64, 40, seed + 11)
    cases = {
        "square": make_image(64, 64, "RGB", seed),
        "wide": make_image(300, 120, "RGB", seed + 1),
        "tall": make_image(120, 300, "RGB", seed + 2),
        "tiny": make_image(10, 10, "RGB", seed + 3),
        "large": make_image(1000, 700, "RGB", seed + 4),
        "rgba": make_image(80, 60, "RGBA", seed + 5),
        "grayscale": make_image(60, 80, "L", seed + 6),
        "palette": make_image(72, 48, "P", seed + 7),
        "la": make_image(50, 50, "LA", seed + 8),
        "cmyk": make_image(48, 72, "CMYK", seed + 9),
        "i16": make_image(40, 30, "I;16", seed + 10),
        "exif_rotated": Image.open(io.BytesIO(data)),
    }
    return cases


def upright_size(img: Image.Image) -> tuple[int, int]:
    """The size after applying EXIF orientation (what a correct pipeline sees)."""
    return ImageOps.exif_transpose(img).size


def corrupt_image_bytes() -> bytes:
    """Bytes with a PNG signature that no decoder can open (``Image.open`` raises)."""
    return b"\x89PNG\r\n\x1a\n" + bytes(range(7, 250, 3)) * 4


def truncated_image_bytes(seed: int = 0) -> bytes:
    """A real PNG cut in half: ``Image.open`` reads the header, ``load()`` fails."""
    data = image_bytes(make_image(64, 64, "RGB", seed), "PNG")
    return data[: len(data) // 2]


def as_vlkit_decodes(img: Image.Image) -> Image.Image:
    """``img`` as vlkit hands it to a VisionModel (RGB; transparency composited on white), so a
    reference can be fed exactly what vlkit decodes."""
    from vlkit.api.media import to_rgb

    return to_rgb(img)
