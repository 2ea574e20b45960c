"""A vlkit server on a free local port, in a thread, for tests (needs the ``serve`` extra).

``with ThreadedServer(pipe, **server_config) as s:`` starts ``create_app(pipe, ServerConfig(...))``
under uvicorn on 127.0.0.1 (``app=``: any other ASGI app instead, e.g. the web UI's); ``s.url`` is its address, ``s.app`` the ASGI app and ``s.client``
an ``openai.OpenAI`` client on it (when the ``openai`` package is installed).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ThreadedServer", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    def __init__(self, pipe: Any, model_name: str = "tiny", start_timeout: float = 30.0, app: Any = None,
                 **config: Any) -> None:
        import uvicorn

        from vlkit.serve import ServerConfig, create_app

        self.port = free_port()
        self.app = app if app is not None else create_app(pipe, ServerConfig(model_name=model_name, **config))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + start_timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", max_retries=0)
        return self._client

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
