"""Loading images: paths, ``file://`` and http(s) URLs, ``data:`` URIs, bytes and PIL images.

Every image is decoded, EXIF-rotated upright and converted to RGB (transparent areas on white),
and refused when it has more than ``max_pixels`` pixels (decompression bombs), checked on the
header before any pixel is decoded. Where an image may come from is a
:class:`~vlkit.api.fetch.MediaPolicy` (the Python API trusts its user; a server does not).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import warnings
from typing import Any
from urllib.parse import unquote, urlparse

from vlkit.api.fetch import MAX_DOWNLOAD_BYTES, ImageLoadError, MediaPolicy, fetch_url

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_TIMEOUT = 10.0

__all__ = ["MAX_DOWNLOAD_BYTES", "ImageLoadError", "MediaPolicy", "decode_image_bytes", "load_image", "open_image",
           "read_image_bytes"]


def _describe_source(source: Any) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    s = str(source)
    if s.startswith("data:"):
        return s[:40] + "..."
    return s if len(s) < 200 else s[:200] + "..."


def _decode_data_uri(uri: str) -> bytes:
    try:
        header, payload = uri.split(",", 1)
    except ValueError as exc:
        raise ImageLoadError("malformed data: URI (no comma)") from exc
    try:
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=False)
        return unquote(payload).encode("latin-1")
    except Exception as exc:
        raise ImageLoadError(f"malformed data: URI payload: {exc}") from exc


def read_image_bytes(source: str | os.PathLike[str] | bytes, timeout: float = DEFAULT_TIMEOUT,
                     policy: MediaPolicy | None = None) -> bytes:
    """The raw bytes behind an image source (path, file://, http(s) URL, data: URI, bytes).

    :param policy: where images may come from (default: :meth:`MediaPolicy.trusted` with
        ``timeout``).
    :raises ImageLoadError: (:class:`~vlkit.api.fetch.MediaRefused` when the policy forbids it).
    """
    policy = policy or MediaPolicy.trusted(timeout)
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    s = os.fspath(source)
    if s.startswith("data:"):
        return _decode_data_uri(s)
    parsed = urlparse(s)
    if parsed.scheme in ("http", "https"):
        return fetch_url(s, policy)
    if parsed.scheme == "file":
        s = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise ImageLoadError(f"unsupported image URL scheme {parsed.scheme!r} in {_describe_source(s)}")
    path = policy.local_path(s)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {s}")
    size = path.stat().st_size
    if size > policy.max_download_bytes:
        raise ImageLoadError(f"image file {s} is larger than {policy.max_download_bytes} bytes")
    return path.read_bytes()


def load_image(
    source: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, timeout: float = DEFAULT_TIMEOUT
) -> Any:
    """Load an image as an upright RGB ``PIL.Image.Image``.

    :param source: a PIL image, bytes, a path, a ``file://`` or http(s) URL, or a ``data:`` URI.
    :param max_pixels: refuse images with more pixels than this.
    :param timeout: seconds to wait for an http(s) URL.
    :raises ImageLoadError: naming the source and the reason.
    """
    from PIL import Image

    if isinstance(source, Image.Image):
        _check_pixels(source, max_pixels, source)
        return _upright_rgb(source)
    return decode_image_bytes(read_image_bytes(source, timeout), source, max_pixels=max_pixels)


def decode_image_bytes(data: bytes, source: Any = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """:func:`load_image` for bytes already read from ``source`` (named in errors)."""
    return finish_decode(open_image(data, source, max_pixels=max_pixels), data if source is None else source)


def open_image(data: bytes, source: Any = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """The image's header read (its ``size`` known, no pixel decoded yet) and checked against
    ``max_pixels``; :func:`finish_decode` decodes it."""
    from PIL import Image

    source = data if source is None else source
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"image {_describe_source(source)} is over the pixel limit (VisionConfig.max_image_pixels): {exc}"
        ) from exc
    except Exception as exc:
        raise ImageLoadError(
            f"cannot decode image {_describe_source(source)}: {type(exc).__name__}: {exc}"
        ) from exc
    _check_pixels(img, max_pixels, source)  # before any pixel is decoded
    return img


def finish_decode(img: Any, source: Any = None) -> Any:
    """Decode an image :func:`open_image` opened: pixels, EXIF orientation, RGB."""
    from PIL import Image

    source = img if source is None else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as exc:
        raise ImageLoadError(
            f"cannot decode image {_describe_source(source)}: {type(exc).__name__}: {exc}"
        ) from exc
    return _upright_rgb(img)


def _upright_rgb(img: Any) -> Any:
    from PIL import ImageOps

    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose the image
        pass
    return to_rgb(img)


def _check_pixels(img: Any, max_pixels: int, source: Any) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageLoadError(
            f"image {_describe_source(source)} has {w}x{h} = {w * h} pixels, over the limit of "
            f"{max_pixels} (VisionConfig.max_image_pixels)"
        )
    if w == 0 or h == 0:
        raise ImageLoadError(f"image {_describe_source(source)} is empty ({w}x{h})")


def to_rgb(img: Any) -> Any:
    """RGB copy of any PIL mode; transparency is composited on white."""
    from PIL import Image

    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16") or img.mode == "I":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() or 1.0
        return Image.fromarray((arr / hi * 255).astype("uint8"), "L").convert("RGB")
    return img.convert("RGB")


def encode_image_base64(image: Any, fmt: str = "PNG") -> str:
    """A PIL image (or any source :func:`load_image` takes) as base64 text, no ``data:`` prefix."""
    img = load_image(image)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_data_uri(image: Any, fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64,{encode_image_base64(image, fmt)}"


def image_hash(img: Any) -> str:
    """Content hash of a decoded image (mode, size and pixels), for caches."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()
