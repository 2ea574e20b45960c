"""The OpenAI-compatible FastAPI application.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (images by URL or ``data:`` URI,
SSE streaming or not), ``POST /v1/completions`` (text), ``GET /health``, ``GET /metrics``.
Errors use OpenAI's shape. A streaming client that goes away aborts its request, which frees
its KV blocks at once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from vlkit.config import GenerationConfig
from vlkit.contract.messages import RawText
from vlkit.serve.errors import APIError, bad_request
from vlkit.serve.metrics import Metrics


@dataclass
class ServerConfig:
    """Server settings.

    Args:
        model_name: the id ``/v1/models`` reports and requests may name.
        api_keys: accepted bearer keys; empty: no authentication.
        max_concurrent_requests: requests in flight at once; more get 429.
        max_body_bytes: larger request bodies get 413.
        default_max_tokens: when a request gives neither ``max_tokens`` nor ``max_completion_tokens``
            (``None``: :class:`~vlkit.config.GenerationConfig`'s default, the one vlkit has).
    """

    model_name: str = "vlkit"
    api_keys: list[str] = field(default_factory=list)
    max_concurrent_requests: int = 256
    max_body_bytes: int = 32 * 1024 * 1024
    default_max_tokens: int | None = None


def _num(body: dict[str, Any], name: str, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
    v = body.get(name)
    if v is None:
        return None
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise bad_request(f"'{name}' must be an integer", name)
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise bad_request(f"'{name}' must be a number", name)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise bad_request(f"'{name}' must be between {lo} and {hi}, got {v}", name)
    return v


def generation_config(body: dict[str, Any], default_max_tokens: int | None = None) -> GenerationConfig:
    """OpenAI request fields -> GenerationConfig (400 naming the field on bad values)."""
    max_tokens = _num(body, "max_completion_tokens", int, 0) or _num(body, "max_tokens", int, 0)
    temperature = _num(body, "temperature", float, 0, 2)
    top_p = _num(body, "top_p", float, 0, 1)
    seed = _num(body, "seed", int)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    logprobs: int | None = None
    if body.get("logprobs"):
        if "messages" in body:  # chat: logprobs is a bool, top_logprobs an int
            logprobs = _num(body, "top_logprobs", int, 0, 20) or 0
            logprobs = max(logprobs, 1)
        else:
            logprobs = _num(body, "logprobs", int, 0, 20)
    n = _num(body, "n", int, 1)
    if n not in (None, 1):
        raise bad_request("only n=1 is supported", "n")
    do_sample = temperature is None or temperature > 0
    if temperature is None:
        temperature = 1.0
    if max_tokens is None:
        max_tokens = default_max_tokens
    return GenerationConfig(
        **({} if max_tokens is None else {"max_new_tokens": max_tokens}),
        do_sample=do_sample and temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=top_p if top_p not in (None, 0) else 1.0,
        top_k=_num(body, "top_k", int, 0) or 0,
        min_p=_num(body, "min_p", float, 0, 1) or 0.0,
        repetition_penalty=_num(body, "repetition_penalty", float, 0.01) or 1.0,
        random_seed=seed,
        stop_words=stop,
        ignore_eos=bool(body.get("ignore_eos", False)),
        logprobs=logprobs,
    )


def create_app(pipe: Any, config: ServerConfig | None = None) -> Any:
    """The FastAPI app serving ``pipe`` (a :class:`vlkit.api.pipeline.Pipeline`)."""
    from vlkit.contract.messages import MessageError

    cfg = config or ServerConfig()
    app = FastAPI(title="vlkit", version=_version())
    metrics = Metrics()
    app.state.pipe, app.state.config, app.state.metrics = pipe, cfg, metrics

    def error_response(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if cfg.api_keys and request.url.path != "/health":
            auth = request.headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            if key not in cfg.api_keys:
                return error_response(APIError(401, "missing or invalid API key", type="authentication_error",
                                               code="invalid_api_key"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_body_bytes:
            return error_response(APIError(413, f"request body of {length} bytes exceeds {cfg.max_body_bytes}",
                                           code="request_too_large"))
        return await call_next(request)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    async def read_json(request: Request) -> dict[str, Any]:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > cfg.max_body_bytes:
                raise APIError(413, f"request body exceeds {cfg.max_body_bytes} bytes", code="request_too_large")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in (cfg.model_name, str(pipe.model_path)):
            raise APIError(404, f"model {model!r} does not exist; this server serves {cfg.model_name!r}",
                           code="model_not_found", param="model")
        return body

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": cfg.model_name, "object": "model", "created": int(app_started), "owned_by": "vlkit",
             "root": str(pipe.model_path)}
        ]}

    @app.get("/metrics")
    async def prom() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(_engine_stats(pipe)), media_type="text/plain; version=0.0.4")

    async def run(request: Request, endpoint: str, prompt: Any, gen: GenerationConfig, stream: bool,
                  shape: Any) -> Any:
        if metrics.running >= cfg.max_concurrent_requests:
            metrics.finished(endpoint, "429")
            raise APIError(429, f"server is at its limit of {cfg.max_concurrent_requests} concurrent requests; retry later",
                           type="rate_limit_error", code="too_many_requests")
        metrics.running += 1
        agen = pipe.generate(prompt, gen)
        try:
            first = await agen.__anext__()  # bad input fails here, before any byte is sent
        except (MessageError, ValueError) as exc:
            metrics.running -= 1
            metrics.finished(endpoint, "400")
            await agen.aclose()
            raise bad_request(str(exc), _param_of(exc)) from exc
        except StopAsyncIteration:
            metrics.running -= 1
            raise APIError(500, "the engine produced no output", type="server_error") from None
        except BaseException:
            metrics.running -= 1
            metrics.finished(endpoint, "500")
            await agen.aclose()
            raise
        rid = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())

        async def all_deltas() -> Any:
            yield first
            async for d in agen:
                yield d

        if stream:
            async def sse() -> Any:
                last = first
                status = "aborted"
                try:
                    async for d in all_deltas():
                        last = d
                        yield "data: " + json.dumps(shape.chunk(rid, created, d)) + "\n\n"
                    if shape.usage_in_stream:
                        yield "data: " + json.dumps(shape.usage_chunk(rid, created, last)) + "\n\n"
                    yield "data: [DONE]\n\n"
                    status = "200"
                finally:
                    await agen.aclose()
                    metrics.running -= 1
                    metrics.finished(endpoint, status, last.input_token_len, last.generate_token_len)

            return StreamingResponse(sse(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, tokens, logprobs, last = [], [], [], first
        try:
            async for d in all_deltas():
                text.append(d.text)
                tokens += d.token_ids
                logprobs += d.logprobs or []
                last = d
                if await request.is_disconnected():
                    break
        finally:
            await agen.aclose()
            metrics.running -= 1
        metrics.finished(endpoint, "200", last.input_token_len, last.generate_token_len)
        return shape.full(rid, created, "".join(text), tokens, logprobs, last)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await read_json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("'messages' must be a non-empty list", "messages")
        gen = generation_config(body, cfg.default_max_tokens)
        stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        return await run(request, "chat", messages, gen, stream,
                         _ChatShape(cfg.model_name, pipe.tokenizer, bool(opts.get("include_usage")), bool(body.get("logprobs"))))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await read_json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise bad_request("'prompt' must be a string", "prompt")
        gen = generation_config(body, cfg.default_max_tokens)
        stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        return await run(request, "completions", RawText(prompt), gen, stream,
                         _CompletionShape(cfg.model_name, pipe.tokenizer, bool(opts.get("include_usage"))))

    app_started = time.time()
    return app


def _param_of(exc: BaseException) -> str | None:
    msg = str(exc)
    for prefix in ("messages", "prompt"):
        if msg.startswith(prefix):
            return msg.split(":", 1)[0]
    if msg.startswith("image "):
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
