"""A local HTTP server for media tests: an image, a slow drip, a hang, redirects, a 404.

It records every request it receives, so a test can show that a refused URL was never fetched.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vlkit.testing import image_bytes, make_image


class MediaServer:
    def __init__(self, redirect_to: str | None = None) -> None:
        self.png = image_bytes(make_image(48, 32, seed=7), "PNG")
        self.seen: list[str] = []
        self.redirect_to = redirect_to
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.seen.append(self.path)
                path = self.path.split("?")[0]
                if path == "/img.png":
                    self._send(200, owner.png)
                elif path == "/drip":  # one byte a second, forever
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    try:
                        for b in owner.png * 100:
                            if owner._stop.is_set():
                                return
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(1.0)
                    except OSError:
                        return
                elif path == "/hang":
                    owner._stop.wait(60)
                elif path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", owner.redirect_to or "/img.png")
                    self.end_headers()
                elif path == "/loop":
                    self.send_response(302)
                    self.send_header("Location", "/loop")
                    self.end_headers()
                elif path == "/big":
                    self.send_response(200)
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                else:
                    self._send(404, b"not found")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
