"""The web UI's HTTP side: the page, ``/webui/info``, and the OpenAI API the page calls.

Two back ends, one page:

- :func:`create_local_app`: the model runs in this process; the page is added to vlkit's own
  OpenAI app (:func:`vlkit.serve.create_app`), so every tab's request goes through the same
  engine and is batched with the others (continuous batching), and a stopped request is aborted
  in the engine the moment the browser drops its stream.
- :func:`create_remote_app`: a running OpenAI-compatible server (``vlkit serve`` or any other).
  The page's ``/v1/chat/completions`` and ``/v1/models`` are forwarded to it byte for byte
  (streams included); the API key is added here, so it never reaches the browser. A stopped
  stream closes the upstream connection, which makes ``vlkit serve`` abort the request.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here

from vlkit.contract.family import is_random_weight_checkpoint

__all__ = ["WebUIInfo", "create_local_app", "create_remote_app", "is_random_weight_checkpoint", "serve_page"]

_PAGE_FILES = {"webui.js": "text/javascript", "webui.css": "text/css"}
_MAX_BODY = 32 * 1024 * 1024


@dataclass
class WebUIInfo:
    """What the page shows in its header (``GET /webui/info``).

    Args:
        model: the model id the page sends (``/v1/models``' first id).
        family: the vlkit model family, when known.
        random_weights: the checkpoint is one of vlkit's tiny random-weight ones.
        backend: ``"in-process"`` or the upstream server's URL.
        max_new_tokens: the page's default for "max new tokens".
    """

    model: str
    family: str | None = None
    random_weights: bool = False
    backend: str = "in-process"
    max_new_tokens: int = 256


def _static(name: str) -> bytes:
    return resources.files("vlkit.webui").joinpath("static", name).read_bytes()


def _add_page(app: Any, info: Any) -> None:
    """``/`` (the page), ``/webui/<asset>`` and ``/webui/info`` on ``app``."""
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return HTMLResponse(_static("index.html"), headers={"Cache-Control": "no-cache"})

    @app.get("/webui/info", include_in_schema=False)
    async def webui_info() -> Any:
        current = await info() if callable(info) else info
        return JSONResponse(asdict(current))

    for name, media in _PAGE_FILES.items():
        def asset(name: str = name, media: str = media) -> Any:
            return Response(_static(name), media_type=media, headers={"Cache-Control": "no-cache"})

        app.add_api_route(f"/webui/{name}", asset, methods=["GET"], include_in_schema=False)


def create_local_app(pipe: Any, model_name: str | None = None, max_new_tokens: int = 256,
                     server_config: Any = None) -> Any:
    """The page plus vlkit's OpenAI app for ``pipe`` (a :class:`vlkit.api.pipeline.Pipeline`), on one app.

    ``server_config`` (a :class:`vlkit.serve.ServerConfig`) sets the API's limits; by default the
    server's own (images as ``data:`` URIs, which is how the page sends them, are always allowed).
    """
    from vlkit.serve import ServerConfig, create_app

    cfg = server_config or ServerConfig()
    if model_name:
        cfg.model_name = model_name
    elif cfg.model_name == "vlkit":
        cfg.model_name = pipe.model_path.name if hasattr(pipe.model_path, "name") else str(pipe.model_path)
    app = create_app(pipe, cfg)
    family = getattr(pipe, "family", None)
    _add_page(app, WebUIInfo(model=cfg.model_name, family=getattr(family, "name", None),
                             random_weights=is_random_weight_checkpoint(pipe.model_path),
                             backend="in-process", max_new_tokens=max_new_tokens))
    return app


def create_remote_app(server_url: str, api_key: str | None = None, max_new_tokens: int = 256,
                      timeout: float = 600.0) -> Any:
    """The page, talking to the OpenAI-compatible server at ``server_url`` (``http://host:port``,
    with or without ``/v1``)."""
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    base = server_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.AsyncClient(base_url=base, headers=headers,
                               timeout=httpx.Timeout(timeout, connect=10.0))

    def unreachable(exc: Exception) -> JSONResponse:
        return JSONResponse({"error": {"message": f"the server at {base} cannot be reached: {exc}",
                                       "type": "server_error", "code": "upstream_unreachable",
                                       "param": None}}, status_code=502)

    async def info() -> WebUIInfo:
        try:
            r = await client.get("/v1/models")
            r.raise_for_status()
            entry = (r.json().get("data") or [{}])[0]
        except (httpx.HTTPError, ValueError):
            return WebUIInfo(model="", backend=base, max_new_tokens=max_new_tokens)
        facts = entry.get("vlkit") if isinstance(entry.get("vlkit"), dict) else {}
        return WebUIInfo(model=str(entry.get("id", "")), family=facts.get("family"),
                         random_weights=bool(facts.get("random_weights")), backend=base,
                         max_new_tokens=max_new_tokens)

    app = FastAPI(title="vlkit webui", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.on_shutdown.append(client.aclose)

    @app.get("/v1/models", include_in_schema=False)
    async def models() -> Any:
        try:
            r = await client.get("/v1/models")
        except httpx.HTTPError as exc:
            return unreachable(exc)
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))

    @app.post("/v1/chat/completions", include_in_schema=False)
    async def chat(request: Request) -> Any:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_BODY:
                return JSONResponse({"error": {"message": f"request body exceeds {_MAX_BODY} bytes",
                                               "type": "invalid_request_error", "code": "request_too_large",
                                               "param": None}}, status_code=413)
        try:
            upstream = await client.send(
                client.build_request("POST", "/v1/chat/completions", content=body,
                                     headers={"Content-Type": "application/json"}), stream=True)
        except httpx.HTTPError as exc:
            return unreachable(exc)
        if not upstream.headers.get("content-type", "").startswith("text/event-stream"):
            content = await upstream.aread()
            await upstream.aclose()
            return Response(content, status_code=upstream.status_code,
                            media_type=upstream.headers.get("content-type", "application/json"))

        async def relay() -> Any:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            except httpx.HTTPError as exc:  # the server went away mid-stream: say so, then end
                err = {"error": {"message": f"the server at {base} dropped the stream: {exc}",
                                 "type": "server_error", "code": "upstream_unreachable"}}
                yield f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
            finally:  # the browser stopped (or the stream ended): close upstream, which aborts it there
                await upstream.aclose()

        return StreamingResponse(relay(), status_code=upstream.status_code, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    _add_page(app, info)
    return app


def serve_page(app: Any, host: str, port: int, what: str, log_level: str = "warning") -> int:
    """Run ``app`` with uvicorn until Ctrl-C, saying where the page is once it is up."""
    import sys

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=3))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"vlkit webui: {what} on http://{shown}:{port}/", file=sys.stderr, flush=True)
    server.run()
    return 0
