"""CLI commands that run models: ``run``, ``chat``, ``demo``, ``bench``, ``serve`` (``webui``: vlkit/cli/webui.py).

Each adder registers one sub-command; heavy imports happen only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vlkit.config import ATTENTION_BACKENDS


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--tp", "-tp", "--tensor-parallel-size", dest="tp", type=int, default=1,
                   help="tensor-parallel degree")
    g.add_argument("--session-len", "--max-model-len", dest="session_len", type=int, default=None,
                   help="longest prompt + output (default: the model's)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    g.add_argument("--num-blocks", type=int, default=None, help="KV-cache blocks (default: sized from memory)")
    g.add_argument("--cache-max-entry-count", type=float, default=None,
                   help="fraction of free memory for the KV cache when --num-blocks is not given")
    g.add_argument("--max-batch-size", type=int, default=None, help="sequences per step at most")
    g.add_argument("--quantization", default=None, choices=["int8", "int4", "int4-asym"],
                   help="weight-only quantization of the LM's linear layers and LM head, round-to-nearest at "
                        "load (int8: per channel; int4: group-wise symmetric; int4-asym: with zero points); "
                        "on CPU the LM then runs in bf16")
    g.add_argument("--quantization-group-size", type=int, default=128, help="int4 group size, a power of two >= 32")
    g.add_argument("--attention-backend", default="auto", choices=ATTENTION_BACKENDS,
                   help="decode attention over the paged KV cache (auto: flash-attn or Triton on CUDA, SDPA on CPU)")
    g.add_argument("--enforce-eager", action="store_true", help="never capture CUDA graphs for decode steps")
    g.add_argument("--revision", default=None, help="branch, tag or commit of a hub id")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="let code shipped with the checkpoint run (never needed by the bundled families)")
    g.add_argument("--chat-template", default=None, help="template name (see `vlkit list-models`) or .jinja path")
    g.add_argument("--vision-max-batch-size", type=int, default=16, help="images per vision forward")
    n = p.add_argument_group("tensor parallelism across machines (torchrun-style; also NNODES, NODE_RANK, "
                             "MASTER_ADDR, MASTER_PORT; VLKIT_TP_SECRET on every node)")
    n.add_argument("--nnodes", type=int, default=None, help="machines the --tp ranks are spread over (default 1)")
    n.add_argument("--node-rank", type=int, default=None,
                   help="this machine's index: 0 runs the engine (and serves HTTP), others only hold ranks")
    n.add_argument("--master-addr", default=None, help="node 0's address, as the other nodes reach it")
    n.add_argument("--master-port", type=int, default=None,
                   help="rendezvous port on node 0 (default 29500; the control channel uses the next one)")


def _topology(args: argparse.Namespace) -> Any:
    from vlkit.engine.cluster import Topology

    return Topology.from_env(args.tp, nnodes=args.nnodes, node_rank=args.node_rank, master_addr=args.master_addr,
                             master_port=args.master_port)


def _worker_node(args: argparse.Namespace, command: str) -> int | None:
    """On a node other than 0: hold this node's TP ranks until node 0's engine stops (the exit
    code), else ``None`` (this process runs the engine)."""
    try:
        topo = _topology(args)
        if topo.node_rank == 0:
            return None
        from vlkit.engine.cluster import secret
        from vlkit.engine.workers import run_worker_node

        secret()
    except ValueError as exc:
        print(f"vlkit {command}: error: {exc}", file=sys.stderr)
        return 2
    print(f"vlkit {command}: node {topo.node_rank} of {topo.nnodes}: tensor-parallel ranks "
          f"{topo.ranks_of(topo.node_rank)} of {topo.world_size}, joining node 0 at {topo.master_addr}:"
          f"{topo.master_port}", file=sys.stderr, flush=True)
    return run_worker_node(topo)


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate at most (default: GenerationConfig's, 512)")
    g.add_argument("--temperature", type=float, default=None, help="sample with this temperature (default: greedy)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop word (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")


def _generation_config(args: argparse.Namespace) -> Any:
    from vlkit.config import GenerationConfig

    sample = args.temperature is not None and args.temperature > 0
    limit = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    return GenerationConfig(
        **limit,
        do_sample=sample,
        temperature=args.temperature if sample else 1.0,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        random_seed=args.seed,
        stop_words=args.stop,
        ignore_eos=args.ignore_eos,
    )


def _pipeline(args: argparse.Namespace) -> Any:
    import vlkit
    from vlkit.config import ChatTemplateConfig, EngineConfig, VisionConfig

    return vlkit.pipeline(
        args.model,
        engine_config=EngineConfig(**_engine_kwargs(args)),
        vision_config=VisionConfig(max_batch_size=args.vision_max_batch_size),
        chat_template_config=ChatTemplateConfig.from_option(args.chat_template),
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )


def _engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`~vlkit.config.EngineConfig` fields the engine flags set."""
    extra: dict[str, Any] = {}
    if args.cache_max_entry_count is not None:
        extra["cache_max_entry_count"] = args.cache_max_entry_count
    if args.max_batch_size is not None:
        extra["max_batch_size"] = args.max_batch_size
    topo = _topology(args)
    if topo.node_rank != 0:
        raise ValueError("--node-rank > 0 only holds tensor-parallel ranks: run it as `vlkit serve MODEL --tp N "
                         "--nnodes M --node-rank K ...` (docs/scaling.md)")
    if topo.nnodes > 1:
        extra.update(nnodes=topo.nnodes, master_addr=topo.master_addr, master_port=topo.master_port)
    return dict(tp=args.tp, session_len=args.session_len, device=args.device, dtype=args.dtype,
                num_blocks=args.num_blocks, quantization=args.quantization,
                quantization_group_size=args.quantization_group_size, attention_backend=args.attention_backend,
                enforce_eager=args.enforce_eager, **extra)


def _prompt(text: str, images: list[str]) -> Any:
    return (text, images) if images else text


def _print_response(pipe: Any, prompt: Any, gen: Any, stream: bool) -> int:
    if stream:
        last = None
        for delta in pipe.stream_infer(prompt, gen_config=gen):
            if delta.finish_reason == "error":
                print(f"\nerror: {delta.error}", file=sys.stderr)
                return 1
            sys.stdout.write(delta.text)
            sys.stdout.flush()
            last = delta
        print()
        if last is not None:
            print(f"[{last.generate_token_len} tokens, finish_reason={last.finish_reason}]", file=sys.stderr)
        return 0
    r = pipe(prompt, gen_config=gen)
    print(r.text)
    print(f"[{r.input_token_len} prompt tokens, {r.generate_token_len} generated, finish_reason={r.finish_reason}]",
          file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from vlkit.contract.messages import MessageError

    try:
        with _pipeline(args) as pipe:
            return _print_response(pipe, _prompt(args.prompt, args.image or []), _generation_config(args), args.stream)
    except (ValueError, FileNotFoundError, MessageError) as exc:
        print(f"vlkit run: error: {exc}", file=sys.stderr)
        return 2


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one prompt (with images) through a model")
    p.add_argument("model", help="local checkpoint directory or hub id")
    p.add_argument("prompt")
    p.add_argument("--image", action="append", help="image path, URL or data: URI (repeatable)")
    p.add_argument("--stream", action="store_true", help="print tokens as they come")
    _add_engine_flags(p)
    _add_generation_flags(p)
    p.set_defaults(func=cmd_run)


CHAT_HELP = """Commands: /image PATH_OR_URL  attach an image to your next message
          /reset              start a new conversation
          /exit               quit (or Ctrl-D)"""


def cmd_chat(args: argparse.Namespace) -> int:
    from vlkit.api.pipeline import Session

    gen = _generation_config(args)
    try:
        pipe = _pipeline(args)
    except (OSError, ValueError) as exc:  # a missing directory, an offline hub id, an unknown architecture
        print(f"vlkit chat: error: {exc}", file=sys.stderr)
        return 2
    with pipe:
        print(f"vlkit chat with {args.model}\n{CHAT_HELP}")
        session, pending = Session(), []
        while True:
            try:
                line = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            line = line.strip()
            if not line:
                continue
            if line in ("/exit", "/quit"):
                return 0
            if line == "/reset":
                session, pending = Session(), []
                print("(new conversation)")
                continue
            if line.startswith("/image"):
                src = line[len("/image"):].strip()
                if not src:
                    print("usage: /image PATH_OR_URL")
                    continue
                pending.append(src)
                print(f"(image attached: {src})")
                continue
            try:
                session = pipe.chat(_prompt(line, pending), session=session, gen_config=gen)
            except ValueError as exc:
                print(f"error: {exc}")
                continue
            pending = []
            print(session.response.text)


def add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive chat in the terminal (attach images with /image)")
    p.add_argument("model", help="local checkpoint directory or hub id")
    _add_engine_flags(p)
    _add_generation_flags(p)
    p.set_defaults(func=cmd_chat)


def cmd_demo(args: argparse.Namespace) -> int:
    from vlkit.cli.demo import run_demo

    return run_demo(args.dir, family=args.family, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                    webui=args.webui, host=args.host, port=args.port)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="write a tiny RANDOM-WEIGHT checkpoint and run a prompt with a bundled image through the whole stack",
    )
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    p.add_argument("--family", default=None,
                   help="family (or plugin) whose tiny checkpoint to use (default: llava if installed, else "
                        "the first installed family)")
    p.add_argument("--prompt", default="Describe this image.")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--webui", action="store_true", help="open the checkpoint in the chat page (vlkit[webui]) instead")
    p.add_argument("--host", default="127.0.0.1", help="--webui: bind address")
    p.add_argument("--port", type=int, default=7860, help="--webui: port")
    p.set_defaults(func=cmd_demo)


def cmd_bench(args: argparse.Namespace) -> int:
    from vlkit.bench.cli import run_cli

    return run_cli(args)


def add_bench(sub: argparse._SubParsersAction) -> None:
    from vlkit.bench.cli import add_arguments

    p = sub.add_parser("bench", help="benchmark vlkit against HF transformers in the same run (see docs/benchmarks.md)")
    add_arguments(p)
    p.set_defaults(func=cmd_bench)


ADDERS: list[Any] = [add_run, add_chat, add_demo, add_bench]


def _limit_mm(value: str) -> int:
    """``--limit-mm-per-prompt``: ``16`` or vLLM's JSON form ``'{"image": 16}'``."""
    import json

    text = value.strip()
    if text.startswith("{"):
        try:
            n = json.loads(text).get("image")
        except (ValueError, AttributeError) as exc:
            raise argparse.ArgumentTypeError(f"not a JSON object: {value!r}") from exc
        if not isinstance(n, int):
            raise argparse.ArgumentTypeError(f"want {{\"image\": N}}, got {value!r}")
        return n
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want an integer or {{\"image\": N}}, got {value!r}") from exc


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from vlkit.serve import ServerConfig, create_app
    except ImportError as exc:
        print(f"vlkit serve: the server needs the serve extra: pip install 'vlkit[serve]' ({exc})", file=sys.stderr)
        return 2
    held = _worker_node(args, "serve")
    if held is not None:
        return held
    if args.replicas > 1 or args.ray_address:
        return _serve_on_ray(args)
    from vlkit.api.fetch import MediaPolicy

    policy = MediaPolicy.server(
        allowed_local_media_path=args.allowed_local_media_path,
        allowed_media_domains=args.allowed_media_domains or (),
        allow_private_urls=args.allow_private_media_urls,
        fetch_timeout=args.media_fetch_timeout,
        max_images=args.limit_mm_per_prompt,
        max_total_pixels=args.max_pixels_per_request or None,
    )
    try:
        pipe = _pipeline(args)
    except (OSError, ValueError) as exc:
        print(f"vlkit serve: error: {exc}", file=sys.stderr)
        return 2
    keys = [k for k in (args.api_keys or []) if k]
    app = create_app(pipe, ServerConfig(
        model_name=args.model_name or str(args.model),
        api_keys=keys,
        max_concurrent_requests=args.max_concurrent_requests,
        max_body_bytes=args.max_body_mb * 1024 * 1024,
        media_policy=policy,
        exit_on_engine_failure=args.exit_on_engine_failure,
    ))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5))

    def stop() -> None:
        server.should_exit = True

    app.state.on_engine_failure = stop
    print(f"vlkit serve: {args.model_name or args.model} on http://{args.host}:{args.port}/v1 "
          f"(health: /health, metrics: /metrics)", file=sys.stderr, flush=True)
    try:
        server.run()
    finally:
        pipe.close()
    if app.state.engine_failed is not None:
        print(f"vlkit serve: exiting, the engine failed: {app.state.engine_failed}", file=sys.stderr)
        return 1
    return 0


def _serve_on_ray(args: argparse.Namespace) -> int:
    try:
        import ray.serve  # noqa: F401

        from vlkit.serve.ray import run_on_ray
    except ImportError as exc:
        print(f"vlkit serve: --replicas needs the ray extra: pip install 'vlkit[ray]' ({exc})", file=sys.stderr)
        return 2
    keys = [k for k in (args.api_keys or []) if k]
    return run_on_ray(str(args.model), replicas=args.replicas, ray_address=args.ray_address, host=args.host,
                      port=args.port, engine=_engine_kwargs(args),
                      server={"model_name": args.model_name or str(args.model), "api_keys": keys,
                              "max_concurrent_requests": args.max_concurrent_requests,
                              "max_body_bytes": args.max_body_mb * 1024 * 1024},
                      pipeline={"revision": args.revision, "trust_remote_code": args.trust_remote_code,
                                "chat_template": args.chat_template,
                                "vision_max_batch_size": args.vision_max_batch_size},
                      num_cpus=args.replica_cpus, num_gpus=args.replica_gpus,
                      placement_strategy=args.placement_strategy, routers=args.routers)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    p.add_argument("model", help="local checkpoint directory or hub id")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=23333)
    p.add_argument("--api-keys", nargs="*", default=None, help="accepted bearer keys (default: no auth)")
    p.add_argument("--api-key", dest="api_keys", action="append", help="an accepted bearer key (repeatable)")
    p.add_argument("--model-name", "--served-model-name", dest="model_name", default=None,
                   help="model id reported by /v1/models (default: MODEL)")
    p.add_argument("--max-concurrent-requests", type=int, default=256, help="more in flight get 429")
    p.add_argument("--max-body-mb", type=int, default=32, help="larger request bodies get 413")
    p.add_argument("--log-level", default="warning")
    r = p.add_argument_group("replicas on Ray Serve (pip install 'vlkit[ray]'; docs/scaling.md)")
    r.add_argument("--replicas", type=int, default=1, help="engines behind one endpoint, on Ray Serve")
    r.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (auto, or ray://host:10001); default with --replicas: a local Ray")
    r.add_argument("--replica-cpus", type=float, default=None,
                   help="Ray CPUs reserved per replica, per tensor-parallel rank with --tp > 1 (default 1)")
    r.add_argument("--replica-gpus", type=float, default=None,
                   help="Ray GPUs reserved per replica, per tensor-parallel rank with --tp > 1")
    r.add_argument("--routers", type=int, default=1, help="replicas of the (stateless) router in front of them")
    r.add_argument("--placement-strategy", default="PACK", choices=["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"],
                   help="with --tp > 1: how Ray places one replica's ranks (Ray actors, one bundle each)")
    p.add_argument("--exit-on-engine-failure", action=argparse.BooleanOptionalAction, default=True,
                   help="exit (code 1) once the engine cannot serve, for a supervisor to restart (default: on)")
    m = p.add_argument_group("media (secure by default; see docs/serving.md)")
    m.add_argument("--allowed-local-media-path", default=None, metavar="DIR",
                   help="read local image paths and file:// URLs under DIR (default: none)")
    m.add_argument("--allowed-media-domains", nargs="*", default=None, metavar="HOST",
                   help="fetch image URLs only from these hosts (and subdomains), whatever their addresses")
    m.add_argument("--allow-private-media-urls", action="store_true",
                   help="fetch image URLs on loopback, private and link-local addresses too")
    m.add_argument("--media-fetch-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="wall-clock limit of a whole image download (default 10)")
    m.add_argument("--limit-mm-per-prompt", type=_limit_mm, default=16, metavar="N",
                   help='images per request (default 16; vLLM\'s \'{"image": N}\' is accepted)')
    m.add_argument("--max-pixels-per-request", type=int, default=128_000_000, metavar="N",
                   help="pixels all of a request's images may have together (default 128000000; 0: no limit)")
    _add_engine_flags(p)
    p.set_defaults(func=cmd_serve)


ADDERS.append(add_serve)
