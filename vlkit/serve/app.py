"""The OpenAI-compatible FastAPI application.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (images by URL or ``data:`` URI,
SSE streaming or not), ``POST /v1/completions`` (text), ``GET /health``, ``GET /metrics``.
Every error is a JSON body in OpenAI's shape, counted in ``vlkit_requests_total``. A client
that goes away, streaming or not, aborts its request, which frees its KV blocks at once.
Images come in under :attr:`ServerConfig.media_policy` (by default no local files and no
private addresses: docs/serving.md, "Security").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from vlkit.api.fetch import MediaPolicy
from vlkit.contract.family import is_random_weight_checkpoint
from vlkit.contract.messages import RawText
from vlkit.serve.errors import APIError, bad_request
from vlkit.serve.guard import Guard
from vlkit.serve.metrics import Metrics
from vlkit.serve.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    generation_config,
    parse_body,
    sanitize,
    validate,
)

logger = logging.getLogger("vlkit.serve")

_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 415, 429, 500, 503)}


@dataclass
class ServerConfig:
    """Server settings.

    Args:
        model_name: the id ``/v1/models`` reports and requests may name.
        api_keys: accepted bearer keys (compared in constant time); empty: no authentication.
        max_concurrent_requests: requests in flight at once; more get 429.
        max_body_bytes: larger request bodies get 413.
        default_max_tokens: when a request gives neither ``max_tokens`` nor ``max_completion_tokens``
            (``None``: :class:`~vlkit.config.GenerationConfig`'s default, the one vlkit has).
        media_policy: where requests' images may come from and how many a request may bring.
        exit_on_engine_failure: once the engine cannot serve (a dead tensor-parallel worker, a
            failed step), stop the server so that a supervisor restarts it (``vlkit serve`` then
            exits 1); ``/health`` says 503 either way.
        engine_check_interval: seconds between checks of the engine's health.
    """

    model_name: str = "vlkit"
    api_keys: list[str] = field(default_factory=list)
    max_concurrent_requests: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    default_max_tokens: int | None = None
    media_policy: MediaPolicy = field(default_factory=MediaPolicy.server)
    exit_on_engine_failure: bool = False
    engine_check_interval: float = 0.5


def create_app(pipe: Any, config: ServerConfig | None = None) -> Any:
    """The FastAPI app serving ``pipe`` (a :class:`vlkit.api.pipeline.Pipeline`).

    ``app.state.on_engine_failure`` (a callable, set by ``vlkit serve``) is called once when the
    engine fails and ``exit_on_engine_failure`` is on; ``app.state.engine_failed`` records it.
    """
    from vlkit.contract.messages import MessageError

    cfg = config or ServerConfig()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        watcher = asyncio.get_running_loop().create_task(watch_engine())
        try:
            yield
        finally:
            watcher.cancel()

    app = FastAPI(title="vlkit", version=_version(), lifespan=lifespan)
    metrics = Metrics()
    app.state.pipe, app.state.config, app.state.metrics = pipe, cfg, metrics
    app.state.engine_failed = None
    app.state.on_engine_failure = None

    def endpoint_of(path: str) -> str:
        return {"/v1/chat/completions": "chat", "/v1/completions": "completions"}.get(path, path.strip("/") or "root")

    app.add_middleware(Guard, api_keys=list(cfg.api_keys), max_body_bytes=cfg.max_body_bytes,
                       on_reject=lambda path, status: metrics.finished(endpoint_of(path), str(status)))

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.finished(endpoint_of(request.url.path), str(exc.status))
        return error_response(exc)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        metrics.finished(endpoint_of(request.url.path), "500")
        return error_response(APIError(500, sanitize(f"internal error: {type(exc).__name__}: {exc}"),
                                       type="server_error"))

    async def read_json(request: Request) -> dict[str, Any]:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > cfg.max_body_bytes:
                raise APIError(413, f"request body exceeds {cfg.max_body_bytes} bytes", code="request_too_large")
        body = parse_body(raw)
        model = body.get("model")
        if model is not None and model not in (cfg.model_name, str(pipe.model_path)):
            raise APIError(404, f"model {model!r} does not exist; this server serves {cfg.model_name!r}",
                           code="model_not_found", param="model")
        return body

    async def watch_engine() -> None:
        while True:
            await asyncio.sleep(cfg.engine_check_interval)
            problem = pipe.failure()
            if problem is None:
                continue
            app.state.engine_failed = problem
            logger.error("the engine cannot serve any more: %s", problem)
            if cfg.exit_on_engine_failure and app.state.on_engine_failure is not None:
                app.state.on_engine_failure()
            return

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health() -> Any:
        problem = pipe.failure()
        if problem is not None:
            return JSONResponse({"status": "unavailable", "error": sanitize(problem)}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": cfg.model_name, "object": "model", "created": int(app_started), "owned_by": "vlkit",
             "root": str(pipe.model_path), "vlkit": model_facts}
        ]}

    @app.get("/metrics")
    async def prom() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(_engine_stats(pipe)), media_type="text/plain; version=0.0.4")

    async def run(request: Request, endpoint: str, prompt: Any, gen: Any, stream: bool, shape: Any) -> Any:
        arrived = time.monotonic()
        if metrics.running >= cfg.max_concurrent_requests:
            raise APIError(429, f"server is at its limit of {cfg.max_concurrent_requests} concurrent requests; retry later",
                           type="rate_limit_error", code="too_many_requests")
        failed = pipe.failure()
        if failed is not None:
            raise APIError(503, f"the engine cannot serve: {sanitize(failed)}", type="server_error",
                           code="engine_unavailable")
        metrics.running += 1
        agen = pipe.generate(prompt, gen, media_policy=cfg.media_policy)
        try:
            first = await agen.__anext__()  # bad input fails here, before any byte is sent
        except (MessageError, ValueError) as exc:
            metrics.running -= 1
            await agen.aclose()
            raise bad_request(sanitize(str(exc)), _param_of(exc)) from exc
        except StopAsyncIteration:
            metrics.running -= 1
            raise APIError(500, "the engine produced no output", type="server_error") from None
        except BaseException as exc:
            metrics.running -= 1
            await agen.aclose()
            if isinstance(exc, Exception):
                raise APIError(503 if pipe.failure() else 500, sanitize(str(exc)), type="server_error") from exc
            raise
        first_at = time.monotonic()
        rid = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())

        def observe(last: Any) -> None:
            metrics.observe_latency(arrived, first_at, time.monotonic(), last.generate_token_len,
                                    last.queue_time if last.queue_time is not None else first.queue_time)

        async def all_deltas() -> Any:
            yield first
            async for d in agen:
                yield d

        if stream:
            async def sse() -> Any:
                last = first
                status = "aborted"
                try:
                    try:
                        async for d in all_deltas():
                            last = d
                            yield "data: " + json.dumps(shape.chunk(rid, created, d)) + "\n\n"
                        if shape.usage_in_stream:
                            yield "data: " + json.dumps(shape.usage_chunk(rid, created, last)) + "\n\n"
                        status = "200"
                    except Exception as exc:  # noqa: BLE001 - the engine failed mid-stream: say so, then end
                        status = "500"
                        logger.error("stream %s failed: %s", rid, exc)
                        err = APIError(500, sanitize(str(exc)), type="server_error", code="engine_failure")
                        yield "data: " + json.dumps(err.body()) + "\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    await agen.aclose()
                    metrics.running -= 1
                    metrics.finished(endpoint, status, last.input_token_len, last.generate_token_len)
                    if status == "200":
                        observe(last)

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        text, tokens, logprobs = [], [], []
        state = {"last": first}

        async def collect() -> None:
            async for d in all_deltas():
                text.append(d.text)
                tokens.extend(d.token_ids)
                logprobs.extend(d.logprobs or [])
                state["last"] = d

        async def client_gone() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return

        work = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(client_gone())
        try:
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:  # the client left: stop generating for it now
                work.cancel()
                metrics.finished(endpoint, "aborted")
                return JSONResponse({"error": {"message": "client disconnected", "type": "aborted"}}, status_code=499)
            exc = work.exception()
            if exc is not None:
                raise APIError(503 if pipe.failure() else 500, sanitize(str(exc)), type="server_error") from exc
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
            try:
                await work
            except BaseException:  # noqa: BLE001 - cancelled or already reported
                pass
            await agen.aclose()
            metrics.running -= 1
        last = state["last"]
        metrics.finished(endpoint, "200", last.input_token_len, last.generate_token_len)
        observe(last)
        return shape.full(rid, created, "".join(text), tokens, logprobs, last)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS,
              openapi_extra=_request_schema(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Any:
        body = await read_json(request)
        req = validate(ChatCompletionRequest, body)
        gen = generation_config(req, cfg.default_max_tokens)
        opts = req.stream_options
        return await run(request, "chat", body["messages"], gen, req.stream,
                         _ChatShape(cfg.model_name, pipe.tokenizer, bool(opts and opts.include_usage),
                                    bool(req.logprobs)))

    @app.post("/v1/completions", response_model=Completion, responses=_ERRORS,
              openapi_extra=_request_schema(CompletionRequest))
    async def completions(request: Request) -> Any:
        body = await read_json(request)
        req = validate(CompletionRequest, body)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise bad_request("'prompt' must be one string (batches are not supported)", "prompt")
            prompt = prompt[0]
        gen = generation_config(req, cfg.default_max_tokens)
        opts = req.stream_options
        return await run(request, "completions", RawText(prompt), gen, req.stream,
                         _CompletionShape(cfg.model_name, pipe.tokenizer, bool(opts and opts.include_usage)))

    app_started = time.time()
    family = getattr(pipe, "family", None)
    model_facts = {"family": getattr(family, "name", None),  # an extension field: clients ignore it
                   "random_weights": is_random_weight_checkpoint(pipe.model_path)}
    return app


def _request_schema(model: Any) -> dict[str, Any]:
    """An OpenAPI requestBody for ``model`` (the endpoints parse their bodies themselves, so that
    size, depth and strictness are theirs to enforce)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema(ref_template=
                                                                 "#/components/schemas/{model}")}}}}


def _param_of(exc: BaseException) -> str | None:
    msg = str(exc)
    for prefix in ("messages", "prompt"):
        if msg.startswith(prefix):
            return msg.split(":", 1)[0]
    if msg.startswith(("image ", "video ")):
        return "messages"
    return None


def _engine_stats(pipe: Any) -> dict[str, Any]:
    eng = getattr(pipe, "engine", None)
    if eng is None:
        return {}
    stats = eng.stats() if callable(getattr(eng, "stats", None)) else {}
    out: dict[str, Any] = {}
    for src, dst in (("num_waiting", "vlkit_queue_depth"), ("num_running", "vlkit_engine_running"),
                     ("num_free_blocks", "vlkit_kv_cache_free_blocks"), ("num_total_blocks", "vlkit_kv_cache_total_blocks"),
                     ("prefix_hit_tokens", "vlkit_prefix_cache_hit_tokens_total"),
                     ("peak_used_blocks", "vlkit_kv_cache_peak_used_blocks"),
                     ("num_preemptions", "vlkit_preemptions_total")):
        if src in stats:
            out[dst] = stats[src]
    if out.get("vlkit_kv_cache_total_blocks"):
        out["vlkit_kv_cache_usage_ratio"] = round(
            1 - out["vlkit_kv_cache_free_blocks"] / out["vlkit_kv_cache_total_blocks"], 6)
    return out


def _token_logprobs(tokenizer: Any, token_ids: list[int], logprobs: list[dict[int, float]]) -> list[dict[str, Any]]:
    out = []
    for tid, top in zip(token_ids, logprobs):
        tok = tokenizer.decode([tid])
        chosen = top.get(tid, max(top.values()) if top else 0.0)
        out.append({
            "token": tok, "logprob": chosen, "bytes": list(tok.encode()),
            "top_logprobs": [
                {"token": (t := tokenizer.decode([i])), "logprob": lp, "bytes": list(t.encode())}
                for i, lp in sorted(top.items(), key=lambda kv: -kv[1])
            ],
        })
    return out


@dataclass
class _ChatShape:
    model: str
    tokenizer: Any
    usage_in_stream: bool
    want_logprobs: bool

    def chunk(self, rid: str, created: int, d: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", "content": d.text},
                                  "finish_reason": d.finish_reason, "logprobs": None}
        if self.want_logprobs and d.logprobs:
            choice["logprobs"] = {"content": _token_logprobs(self.tokenizer, d.token_ids, d.logprobs)}
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                "choices": [choice]}

    def usage_chunk(self, rid: str, created: int, d: Any) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model,
                "choices": [], "usage": _usage(d)}

    def full(self, rid: str, created: int, text: str, tokens: list[int], logprobs: list[Any], d: Any) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": d.finish_reason, "logprobs": None}
        if self.want_logprobs and logprobs:
            choice["logprobs"] = {"content": _token_logprobs(self.tokenizer, tokens, logprobs)}
        return {"id": rid, "object": "chat.completion", "created": created, "model": self.model,
                "choices": [choice], "usage": _usage(d)}


@dataclass
class _CompletionShape:
    model: str
    tokenizer: Any
    usage_in_stream: bool

    def chunk(self, rid: str, created: int, d: Any) -> dict[str, Any]:
        return {"id": rid, "object": "text_completion", "created": created, "model": self.model,
                "choices": [{"index": 0, "text": d.text, "finish_reason": d.finish_reason, "logprobs": None}]}

    def usage_chunk(self, rid: str, created: int, d: Any) -> dict[str, Any]:
        return {"id": rid, "object": "text_completion", "created": created, "model": self.model,
                "choices": [], "usage": _usage(d)}

    def full(self, rid: str, created: int, text: str, tokens: list[int], logprobs: list[Any], d: Any) -> dict[str, Any]:
        lp = None
        if logprobs:
            toks = [self.tokenizer.decode([t]) for t in tokens]
            lp = {"tokens": toks, "token_logprobs": [p.get(t) for t, p in zip(tokens, logprobs)],
                  "top_logprobs": [{self.tokenizer.decode([i]): v for i, v in p.items()} for p in logprobs]}
        return {"id": rid, "object": "text_completion", "created": created, "model": self.model,
                "choices": [{"index": 0, "text": text, "finish_reason": d.finish_reason, "logprobs": lp}],
                "usage": _usage(d)}


def _usage(d: Any) -> dict[str, int]:
    return {"prompt_tokens": d.input_token_len, "completion_tokens": d.generate_token_len,
            "total_tokens": d.input_token_len + d.generate_token_len}


def _version() -> str:
    from vlkit import __version__

    return __version__
