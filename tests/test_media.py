import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from PIL import Image

from vlkit.api.media import ImageLoadError, encode_image_base64, image_hash, load_image


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def rgb():
    img = Image.new("RGB", (31, 17))
    img.putpixel((3, 4), (250, 10, 20))
    return img


def test_sources_all_decode_to_the_same_pixels(rgb, tmp_path):
    data = _png(rgb)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    for src in (rgb, data, str(path), path, f"file://{path}", uri):
        img = load_image(src)
        assert img.mode == "RGB" and img.size == (31, 17)
        assert image_hash(img) == image_hash(rgb)


def test_http_url_and_timeout(rgb):
    data = _png(rgb)

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        img = load_image(f"http://127.0.0.1:{srv.server_port}/a.png", timeout=5)
        assert image_hash(img) == image_hash(rgb)
    finally:
        srv.shutdown()
    with pytest.raises(ImageLoadError, match="could not fetch image URL"):
        load_image("http://127.0.0.1:9/nothing.png", timeout=2)


def test_undecodable_and_missing():
    with pytest.raises(ImageLoadError, match="cannot decode image"):
        load_image(b"not an image at all")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image("/no/such/file.png")


def test_pixel_limit_refuses_bombs(rgb):
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(_png(rgb), max_pixels=100)
    with pytest.raises(ImageLoadError, match="over the limit"):
        load_image(rgb, max_pixels=100)


def test_modes_become_rgb():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("L", (4, 4), 128)).getpixel((0, 0)) == (128, 128, 128)
    pal = Image.new("P", (4, 4))
    assert load_image(pal).mode == "RGB"


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert load_image(buf.getvalue()).size == (20, 40)


def test_encode_image_base64_round_trips(rgb):
    b64 = encode_image_base64(rgb)
    assert image_hash(load_image(base64.b64decode(b64))) == image_hash(rgb)
