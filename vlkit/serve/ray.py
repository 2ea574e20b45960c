"""vlkit on Ray Serve: ``N`` engines behind one OpenAI endpoint (the ``ray`` extra).

Two deployments (vLLM's Ray Serve LLM has the same shape: a router in front of the engines):

- **engines** (``vlkit``, ``replicas`` of them, or autoscaled): each builds its own pipeline and
  runs vlkit's OpenAI app (:func:`vlkit.serve.create_app`) in-process, so the API, its errors and
  its limits are ``vlkit serve``'s; Ray Serve health-checks them (an engine that can no longer
  serve fails its check) and restarts one that dies.
- **the router** (``vlkit-router``, the HTTP ingress): reads each request, picks its
  *cache-affinity key* (:func:`routing_key`: the ``serve_multiplexed_model_id`` header, else the
  OpenAI ``user`` field, else the first image, else the conversation's opening messages) and
  forwards it through a deployment handle with that key as Ray Serve's multiplexed model id. Ray
  Serve sends a key's requests to the replica that already "holds" it (the one with its prefix
  blocks and image features cached), falling back to its default balancing when that replica is
  busy. Responses stream back unchanged and carry ``x-vlkit-replica`` / ``x-vlkit-replica-pid``.
  A replica that dies mid-request gives an OpenAI-shaped 503 (``code: "replica_unavailable"``;
  inside an SSE stream, a final ``data: {"error": ...}`` event). ``GET /metrics`` is every live
  replica's exposition, each sample labelled ``replica="<id>"`` (replicas push theirs to a small
  named actor every second; one silent for 10 s drops out).

Three ways to run it:

- ``vlkit serve MODEL --replicas N [--ray-address auto|ADDR]`` (a local Ray instance without an
  address);
- ``serve run vlkit.serve.ray:app model=MODEL replicas=N`` (Ray Serve's application-builder
  convention; every ``key=value`` is an argument of :func:`app`);
- a Serve config file naming ``import_path: vlkit.serve.ray:app`` with ``args:`` (docs/scaling.md).
"""

# no ``from __future__ import annotations`` here: FastAPI reads the router's parameter types from
# the live annotations, and its classes are imported inside the function that defines the router

import asyncio
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["ReplicaHeaders", "app", "build_app", "merge_metrics", "routing_key", "run_on_ray"]

#: the header a client may set to name its session itself (Ray Serve's multiplexing header)
SESSION_HEADER = "serve_multiplexed_model_id"
#: how often a replica pushes its metrics, and how long the router keeps a silent replica's
METRICS_PUSH_S = 1.0
METRICS_MAX_AGE_S = 10.0


class ReplicaHeaders:
    """ASGI middleware adding ``x-vlkit-replica`` / ``x-vlkit-replica-pid`` to every response
    (pure ASGI, so streams and client disconnects pass through untouched)."""

    def __init__(self, app: Any, replica: str, sticky: Any = None) -> None:
        self.app = app
        self.sticky = sticky
        self.headers = [(b"x-vlkit-replica", replica.encode()), (b"x-vlkit-replica-pid", str(os.getpid()).encode())]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.sticky is not None:
            await self.sticky()

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, tagged)


# -- routing ---------------------------------------------------------------------------------
def _digest(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()[:20]


def _first_image(messages: list[Any]) -> str | None:
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict) or part.get("type") not in ("image_url", "input_image", "image"):
                continue
            ref = part.get("image_url", part.get("image"))
            url = ref.get("url") if isinstance(ref, dict) else ref
            if isinstance(url, str) and url:
                return url
    return None


def routing_key(path: str, headers: dict[str, str], body: bytes) -> str | None:
    """The cache-affinity key of one OpenAI request, or None (any replica will do).

    In order: the ``serve_multiplexed_model_id`` header (a client naming its session); the
    request's ``user`` field; for chat, the first image of the conversation (every later turn
    repeats it, and its features are cached where it was first encoded), else the opening
    messages up to and including the first user message (the prefix every later turn shares);
    for completions, the first 512 characters of the prompt. Keys are hashed, never echoed.
    """
    explicit = headers.get(SESSION_HEADER)
    if explicit:
        return f"session-{_digest(explicit.encode())}"
    if not path.endswith("/completions"):
        return None
    try:
        req = json.loads(body)
    except ValueError:
        return None
    if not isinstance(req, dict):
        return None
    user = req.get("user")
    if isinstance(user, str) and user:
        return f"user-{_digest(user.encode())}"
    messages = req.get("messages")
    if isinstance(messages, list) and messages:
        image = _first_image(messages)
        if image is not None:
            return f"image-{_digest(image.encode())}"
        opening = []
        for m in messages:
            opening.append(m)
            if isinstance(m, dict) and m.get("role") == "user":
                break
        return f"prefix-{_digest(opening)}"
    prompt = req.get("prompt")
    if isinstance(prompt, str) and prompt:
        return f"prefix-{_digest(prompt[:512].encode())}"
    return None


#: sessions one replica remembers for routing (LRU beyond this)
SESSIONS_PER_REPLICA = 4096


def _session_affinity() -> Any:
    """Ray Serve routes a request whose multiplexed model id names a "model" to a replica that
    has loaded it (falling back to its default balancing when those replicas are busy). vlkit
    "loads" the routing key, which costs nothing, so the requests of one key keep landing on the
    replica holding its prefix blocks and image features."""
    from ray import serve

    @serve.multiplexed(max_num_models_per_replica=SESSIONS_PER_REPLICA)
    async def hold(session: str) -> str:
        return session

    async def sticky() -> None:
        session = serve.get_multiplexed_model_id()
        if session:
            await hold(session)

    return sticky


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a replica (tests, local mode)
        return f"pid-{os.getpid()}"


# -- one request through an in-process ASGI app, as a stream ---------------------------------
async def asgi_stream(app: Any, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> AsyncIterator[Any]:
    """Run one HTTP request through ``app``; yields ``("start", status, headers)`` then the body's
    chunks (bytes). Closing the iterator early is a client disconnect: the app sees
    ``http.disconnect`` (vlkit's app then aborts the request in the engine)."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    disconnected = asyncio.Event()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await queue.put(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 0), "server": ("vlkit-replica", 80)}
    task = asyncio.ensure_future(app(scope, receive, send))
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                task.result()  # the app ended without finishing its response: raise what it raised
                if queue.empty():
                    return
                continue
            message = get.result()
            if message["type"] == "http.response.start":
                yield ("start", message["status"], list(message.get("headers", [])))
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
    finally:
        disconnected.set()
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=5.0)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                task.cancel()


# -- metrics across replicas ------------------------------------------------------------------
class _MetricsHub:
    """A named Ray actor holding each replica's latest Prometheus exposition."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.time(), text)

    def snapshot(self, max_age: float = METRICS_MAX_AGE_S) -> dict[str, str]:
        now = time.time()
        self.texts = {r: (t, x) for r, (t, x) in self.texts.items() if now - t <= max_age}
        return {r: x for r, (_, x) in sorted(self.texts.items())}


def _hub(name: str) -> Any:
    import ray

    return ray.remote(num_cpus=0)(_MetricsHub).options(name=name, get_if_exists=True, lifetime="detached").remote()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?(.*)$")


def _with_label(sample: str, replica: str) -> str:
    m = _SAMPLE.match(sample)
    if m is None:
        return sample
    name, labels, rest = m.groups()
    inner = labels[1:-1] if labels else ""
    return f'{name}{{replica="{replica}"{"," + inner if inner else ""}}}{rest}'


def merge_metrics(texts: dict[str, str]) -> str:
    """One Prometheus exposition from several replicas': every sample gains a ``replica`` label,
    and each metric's ``# HELP`` / ``# TYPE`` appears once, before all of its samples."""
    families: dict[str, list[str]] = {}
    meta: dict[str, list[str]] = {}
    for replica, text in texts.items():
        current = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    current = parts[2]
                    meta.setdefault(current, [])
                    if len(meta[current]) < 2 and line not in meta[current]:
                        meta[current].append(line)
                    families.setdefault(current, [])
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            family = current if current is not None and name.startswith(current) else name
            families.setdefault(family, []).append(_with_label(line, replica))
    out: list[str] = []
    for family, samples in families.items():
        out += meta.get(family, []) + samples
    return "\n".join(out) + "\n"


# -- the two deployments ---------------------------------------------------------------------
class EngineReplica:
    """One vlkit engine behind the router (the body of the ``vlkit`` deployment)."""

    def __init__(self, model: str, engine: dict[str, Any], server: dict[str, Any], hub_name: str,
                 pipeline: dict[str, Any] | None = None) -> None:
        import vlkit
        from vlkit.config import ChatTemplateConfig, VisionConfig
        from vlkit.serve import ServerConfig, create_app

        kw = dict(pipeline or {})
        template = ChatTemplateConfig.from_option(kw.pop("chat_template", None))
        vision = VisionConfig(max_batch_size=kw.pop("vision_max_batch_size", None) or VisionConfig().max_batch_size)
        self.pipe = vlkit.pipeline(model, engine_config=vlkit.EngineConfig(**engine), vision_config=vision,
                                   chat_template_config=template, revision=kw.pop("revision", None),
                                   trust_remote_code=bool(kw.pop("trust_remote_code", False)), **kw)
        self.replica = _replica_id()
        self.fastapi = create_app(self.pipe, ServerConfig(**server))
        self.app = ReplicaHeaders(self.fastapi, self.replica)
        self.sticky = _session_affinity()
        self.hub = _hub(hub_name)
        # a daemon thread: it ends with the replica's process
        threading.Thread(target=self._push_metrics, name="vlkit-metrics-push", daemon=True).start()

    def _push_metrics(self) -> None:
        from vlkit.serve.app import _engine_stats

        while True:
            time.sleep(METRICS_PUSH_S)
            try:
                text = self.fastapi.state.metrics.render(_engine_stats(self.pipe))
                self.hub.put.remote(self.replica, text)
            except Exception:  # noqa: BLE001 - metrics must never take the replica down
                pass

    async def handle(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                     body: bytes) -> AsyncIterator[Any]:
        """One forwarded request: ``("start", status, headers)``, then body chunks."""
        await self.sticky()
        async for item in asgi_stream(self.app, method, path, query, headers, body):
            yield item

    async def handle_whole(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                           body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One forwarded request that does not stream: ``(status, headers, body)`` in one reply
        (one object through Ray instead of one per chunk)."""
        status, out_headers, chunks = 500, [], []
        async for item in self.handle(method, path, query, headers, body):
            if isinstance(item, tuple):
                _, status, out_headers = item
            else:
                chunks.append(item)
        return status, out_headers, b"".join(chunks)

    def check_health(self) -> None:
        problem = self.pipe.failure()
        if problem is not None:
            raise RuntimeError(f"the engine cannot serve: {problem}")


def _wants_stream(body: bytes) -> bool:
    """Whether an OpenAI request body asks for a stream (``"stream": true``)."""
    if b'"stream"' not in body:
        return False
    try:
        req = json.loads(body)
    except ValueError:
        return False
    return isinstance(req, dict) and req.get("stream") is True


def _replica_failed(exc: BaseException) -> Any:
    from vlkit.serve.errors import APIError

    return APIError(503, f"the replica serving this request failed ({type(exc).__name__}); retry it",
                    type="server_error", code="replica_unavailable")


def _router_class(server: dict[str, Any], hub_name: str) -> type:
    """The ``vlkit-router`` deployment's class: a FastAPI ingress forwarding to the engines."""
    from fastapi import FastAPI, Request
    from ray import serve
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

    from vlkit.serve.guard import Guard

    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(Guard, api_keys=list(server.get("api_keys") or []),
                       max_body_bytes=int(server.get("max_body_bytes", 32 << 20)))

    class VLKitRouter:
        def __init__(self, engine: Any) -> None:
            self.engine = engine
            self.hub = _hub(hub_name)

        @api.get("/metrics")
        async def metrics(self) -> Any:
            texts = await self.hub.snapshot.remote()
            return PlainTextResponse(merge_metrics(texts), media_type="text/plain; version=0.0.4")

        @api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"])
        async def forward(self, request: Request, path: str) -> Any:
            body = await request.body()
            raw = list(request.headers.raw)
            key = routing_key(request.url.path, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw},
                              body)
            args = (request.method, request.url.path, request.url.query.encode(), raw, body)
            routed = {"multiplexed_model_id": key} if key else {}
            if not _wants_stream(body):
                try:
                    status, headers, content = await self.engine.options(**routed).handle_whole.remote(*args)
                except Exception as exc:  # noqa: BLE001 - the replica died or could not be reached
                    err = _replica_failed(exc)
                    return JSONResponse(err.body(), status_code=err.status)
                response = Response(content, status_code=status)
                response.raw_headers = list(headers)
                return response
            gen = self.engine.options(stream=True, **routed).handle.remote(*args)
            try:
                _, status, headers = await gen.__anext__()
            except Exception as exc:  # noqa: BLE001 - the replica died or could not be reached
                err = _replica_failed(exc)
                return JSONResponse(err.body(), status_code=err.status)
            sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in headers)

            async def rest() -> AsyncIterator[bytes]:
                done = False
                try:
                    async for chunk in gen:
                        yield chunk
                    done = True
                except Exception as exc:  # noqa: BLE001 - the replica died mid-response
                    done = True
                    if sse:
                        yield b"data: " + json.dumps(_replica_failed(exc).body()).encode() + b"\n\n"
                finally:
                    if not done:  # the client went away: stop the request on its replica
                        gen.cancel()

            response = StreamingResponse(rest(), status_code=status)
            response.raw_headers = list(headers)
            return response

    return serve.ingress(api)(VLKitRouter)


def build_app(model: str, replicas: int = 1, engine: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
              num_cpus: float | None = None, num_gpus: float | None = None, autoscaling: dict[str, Any] | None = None,
              max_ongoing_requests: int = 256, name: str = "vlkit", pipeline: dict[str, Any] | None = None,
              placement_strategy: str = "PACK", routers: int = 1) -> Any:
    """A Ray Serve application of ``replicas`` vlkit engines serving ``model``, behind the router.

    Args:
        model: checkpoint directory (present on every node) or hub id.
        replicas: engine replica count (ignored with ``autoscaling``).
        engine: :class:`vlkit.EngineConfig` fields per replica (``tp``, ``dtype``, ``num_blocks`` …).
        server: :class:`vlkit.serve.ServerConfig` fields (``model_name``, ``api_keys`` …).
        num_cpus / num_gpus: Ray resources per tensor-parallel rank of an engine replica. With
            ``tp > 1`` each replica reserves a placement group of ``tp`` such bundles and its
            ranks ``1..tp-1`` run as Ray actors in them (``EngineConfig.tp_backend="ray"``), so
            one replica's ranks may sit on different nodes; ``tp_backend="process"`` keeps them
            as processes inside the replica's own reservation instead.
        autoscaling: Ray Serve's ``autoscaling_config`` (``min_replicas``, ``max_replicas``,
            ``target_ongoing_requests`` …), passed through to the engines.
        max_ongoing_requests: requests Ray Serve sends one engine at once (its engine batches them).
        name: the engine deployment's name (the router's is ``<name>-router``).
        placement_strategy: Ray's placement-group strategy for a replica's ranks: ``PACK``
            (the default: one node where they fit), ``STRICT_PACK``, ``SPREAD``, ``STRICT_SPREAD``.
        routers: replicas of the router (it holds no state: more for availability, or when one
            router's CPU becomes the limit).
        pipeline: what else each replica's :func:`vlkit.pipeline` gets: ``revision``,
            ``trust_remote_code``, ``chat_template`` (a template name, or a ``.jinja`` path present
            on every node), ``vision_max_batch_size``.
    """
    from ray import serve

    engine_kw = dict(engine or {})
    server_kw = {"model_name": model, **(server or {})}
    hub_name = f"{name}-metrics-hub"
    options: dict[str, Any] = {"num_cpus": 1 if num_cpus is None else num_cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    tp = int(engine_kw.get("tp", 1))
    placement: dict[str, Any] = {}
    if tp > 1 and engine_kw.setdefault("tp_backend", "ray") == "ray":
        # one bundle per rank: the replica (rank 0) in bundle 0, rank k's actor in bundle k
        bundle = {"CPU": options["num_cpus"], **({"GPU": options["num_gpus"]} if num_gpus else {})}
        placement = {"placement_group_bundles": [dict(bundle) for _ in range(tp)],
                     "placement_group_strategy": placement_strategy}
    engines = serve.deployment(
        type("VLKitEngine", (EngineReplica,), {}),
        name=name,
        num_replicas=None if autoscaling else replicas,
        autoscaling_config=autoscaling,
        ray_actor_options=options,
        max_ongoing_requests=max_ongoing_requests,
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
        **placement,
    ).bind(model, engine_kw, server_kw, hub_name, {k: v for k, v in (pipeline or {}).items() if v is not None})
    router = serve.deployment(
        _router_class(server_kw, hub_name), name=f"{name}-router", num_replicas=routers,
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max(1024, 4 * max_ongoing_requests),
    )
    return router.bind(engines)


def _number(value: Any) -> Any:
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


def app(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder: ``serve run vlkit.serve.ray:app model=M replicas=2 tp=1``.

    Keys: ``model`` (required), ``replicas``, ``num_cpus``, ``num_gpus``, ``min_replicas`` /
    ``max_replicas`` / ``target_ongoing_requests`` (autoscaling), ``model_name``, ``api_key``,
    ``revision``, ``trust_remote_code``, ``chat_template``, ``vision_max_batch_size``,
    ``placement_strategy``, ``routers``, and
    any :class:`vlkit.EngineConfig` field (``tp``, ``dtype``, ``num_blocks``, ``session_len`` …).
    """
    from dataclasses import fields

    from vlkit.config import EngineConfig

    args = {k: _number(v) for k, v in dict(args).items()}
    if "model" not in args:
        raise ValueError("vlkit.serve.ray:app needs model=<checkpoint directory or hub id>")
    engine_fields = {f.name for f in fields(EngineConfig)}
    engine = {k: args.pop(k) for k in list(args) if k in engine_fields}
    auto = {k: args.pop(k) for k in ("min_replicas", "max_replicas", "target_ongoing_requests") if k in args}
    server: dict[str, Any] = {}
    if "model_name" in args:
        server["model_name"] = str(args.pop("model_name"))
    if "api_key" in args:
        server["api_keys"] = [str(args.pop("api_key"))]
    model = str(args.pop("model"))
    pipe = {k: args.pop(k) for k in ("revision", "trust_remote_code", "chat_template", "vision_max_batch_size")
            if k in args}
    kw = {k: args.pop(k) for k in ("replicas", "num_cpus", "num_gpus", "max_ongoing_requests", "placement_strategy",
                                   "routers") if k in args}
    if args:
        raise ValueError(f"vlkit.serve.ray:app: unknown arguments {sorted(args)}")
    return build_app(model, engine=engine, server=server, autoscaling=auto or None, pipeline=pipe or None, **kw)


def run_on_ray(model: str, replicas: int = 2, ray_address: str | None = None, host: str = "127.0.0.1",
               port: int = 23333, **kw: Any) -> int:
    """``vlkit serve MODEL --replicas N``: join (or start) Ray, deploy, serve until Ctrl-C / SIGTERM."""
    import signal
    import sys
    import threading

    import ray
    from ray import serve

    ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(model, replicas=replicas, **kw), name="vlkit", route_prefix="/")
        print(f"vlkit serve: {kw.get('server', {}).get('model_name', model)} on http://{host}:{port}/v1, "
              f"{replicas} replicas on Ray Serve", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
