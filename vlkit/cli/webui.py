"""``vlkit webui``: the chat page, for a model in this process or a running OpenAI server."""

from __future__ import annotations

import argparse
import sys


def cmd_webui(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401

        from vlkit.webui import create_local_app, create_remote_app, serve_page  # imports fastapi
    except ImportError as exc:
        print(f"vlkit webui: the web UI needs the webui extra: pip install 'vlkit[webui]' ({exc})", file=sys.stderr)
        return 2

    if args.server:
        if args.model:
            print("vlkit webui: give MODEL or --server URL, not both", file=sys.stderr)
            return 2
        app = create_remote_app(args.server, api_key=args.api_key, max_new_tokens=args.default_max_new_tokens)
        return serve_page(app, args.host, args.port, f"chat page for {args.server}", args.log_level)
    if not args.model:
        print("vlkit webui: give a MODEL (a checkpoint directory or hub id) or --server URL", file=sys.stderr)
        return 2
    from vlkit.cli.commands import _pipeline

    try:
        pipe = _pipeline(args)
    except (OSError, ValueError) as exc:
        print(f"vlkit webui: error: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_local_app(pipe, model_name=args.model_name, max_new_tokens=args.default_max_new_tokens)
        return serve_page(app, args.host, args.port, f"chat page for {args.model_name or args.model}", args.log_level)
    finally:
        pipe.close()


def add_page_flags(p: argparse.ArgumentParser, port: int = 7860) -> None:
    g = p.add_argument_group("web page")
    g.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    g.add_argument("--default-max-new-tokens", type=int, default=256, help="the page's initial max new tokens")
    g.add_argument("--log-level", default="warning")


def add_webui(sub: argparse._SubParsersAction) -> None:
    from vlkit.cli.commands import _add_engine_flags

    p = sub.add_parser("webui", help="chat in the browser: a model in-process, or --server URL of a running server")
    p.add_argument("model", nargs="?", default=None, help="local checkpoint directory or hub id")
    p.add_argument("--server", default=None, metavar="URL",
                   help="use a running OpenAI-compatible server (e.g. http://127.0.0.1:23333) instead of MODEL")
    p.add_argument("--api-key", default=None, help="bearer key for --server (kept server-side, never sent to the page)")
    p.add_argument("--model-name", default=None, help="model id the page shows and sends (default: MODEL)")
    add_page_flags(p)
    _add_engine_flags(p)
    p.set_defaults(func=cmd_webui)
