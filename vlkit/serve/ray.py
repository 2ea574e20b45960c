"""vlkit on Ray Serve: ``N`` engines behind one OpenAI endpoint (the ``ray`` extra).

Each Ray Serve replica builds its own pipeline and serves vlkit's OpenAI app
(:func:`vlkit.serve.create_app`) as the deployment's ASGI ingress, so the API, its errors and
its limits are the same as ``vlkit serve``'s; Ray Serve's HTTP proxy balances requests over the
replicas, health-checks them and restarts one that dies (its in-flight requests fail; the other
replicas keep serving). Every response carries ``x-vlkit-replica`` (the replica's id) and
``x-vlkit-replica-pid``. A chat session that sends the same ``serve_multiplexed_model_id`` header
on every turn (Ray Serve's routing key) sticks to one replica, the one holding its cached
prefix and image features.

Three ways to run it:

- ``vlkit serve MODEL --replicas N [--ray-address auto|ADDR]`` (a local Ray instance without an
  address);
- ``serve run vlkit.serve.ray:app model=MODEL replicas=N`` (Ray Serve's application-builder
  convention; every ``key=value`` is an argument of :func:`app`);
- a Serve config file naming ``import_path: vlkit.serve.ray:app`` with ``args:`` (docs/scaling.md).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ReplicaHeaders", "app", "build_app", "run_on_ray"]


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


#: sessions one replica remembers for routing (LRU beyond this)
SESSIONS_PER_REPLICA = 4096


def _session_affinity() -> Any:
    """Ray Serve routes a request whose ``serve_multiplexed_model_id`` header names a "model" to
    a replica that has loaded it (falling back to its default balancing when those replicas are
    busy). vlkit "loads" the session id, which costs nothing, so a chat session that sends the
    same id on every turn lands on the replica holding its prefix blocks and image features."""
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


def build_app(model: str, replicas: int = 1, engine: dict[str, Any] | None = None, server: dict[str, Any] | None = None,
              num_cpus: float | None = None, num_gpus: float | None = None, autoscaling: dict[str, Any] | None = None,
              max_ongoing_requests: int = 256, name: str = "vlkit") -> Any:
    """A Ray Serve application of ``replicas`` vlkit engines serving ``model``.

    Args:
        model: checkpoint directory (present on every node) or hub id.
        replicas: replica count (ignored with ``autoscaling``).
        engine: :class:`vlkit.EngineConfig` fields per replica (``tp``, ``dtype``, ``num_blocks`` …).
        server: :class:`vlkit.serve.ServerConfig` fields (``model_name``, ``api_keys`` …).
        num_cpus / num_gpus: Ray resources per replica; with ``tp > 1`` the replica's TP
            workers run inside that reservation (one bundle per replica).
        autoscaling: Ray Serve's ``autoscaling_config`` (``min_replicas``, ``max_replicas``,
            ``target_ongoing_requests`` …), passed through.
        max_ongoing_requests: requests Ray Serve sends one replica at once (its engine batches them).
    """
    from ray import serve

    engine_kw = dict(engine or {})
    server_kw = {"model_name": model, **(server or {})}

    def asgi() -> Any:  # runs in each replica when it starts
        import vlkit
        from vlkit.serve import ServerConfig, create_app

        pipe = vlkit.pipeline(model, engine_config=vlkit.EngineConfig(**engine_kw))
        return ReplicaHeaders(create_app(pipe, ServerConfig(**server_kw)), _replica_id(), _session_affinity())

    options: dict[str, Any] = {"num_cpus": 1 if num_cpus is None else num_cpus}
    if num_gpus:
        options["num_gpus"] = num_gpus
    dep = serve.deployment(
        serve.ingress(asgi)(type("VLKitReplica", (), {})),
        name=name,
        num_replicas=None if autoscaling else replicas,
        autoscaling_config=autoscaling,
        ray_actor_options=options,
        max_ongoing_requests=max_ongoing_requests,
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
    )
    return dep.bind()


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
    ``max_replicas`` / ``target_ongoing_requests`` (autoscaling), ``model_name``, ``api_key``, and
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
    kw = {k: args.pop(k) for k in ("replicas", "num_cpus", "num_gpus", "max_ongoing_requests") if k in args}
    if args:
        raise ValueError(f"vlkit.serve.ray:app: unknown arguments {sorted(args)}")
    return build_app(model, engine=engine, server=server, autoscaling=auto or None, **kw)


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
