"""The ``vlkit`` command line.

``list-models``, ``plugins`` and ``scaffold`` never import torch; the commands that run a
model import the pipeline when they start. Plugins add commands through the
``vlkit_register_commands`` hook.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _families_payload() -> dict[str, Any]:
    from vlkit.contract.registry import get_registry

    reg = get_registry()
    versions = {p.name: p.version for p in reg.plugins}
    families = [
        {
            "name": f.name,
            "architectures": list(f.architectures),
            "plugin": f.plugin,
            "version": versions.get(f.plugin),
            "templates": list(f.chat_templates),
            "description": f.description,
        }
        for f in reg.families()
    ]
    failed = [p.to_dict() for p in reg.failed_plugins()]
    return {"families": families, "failed_plugins": failed}


def cmd_list_models(args: argparse.Namespace) -> int:
    payload = _families_payload()
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    fams, failed = payload["families"], payload["failed_plugins"]
    if not fams:
        print("No model families installed. Install a plugin, e.g. `pip install vlkit-plugin-llava`.")
    for f in fams:
        print(f"{f['name']}  (plugin {f['plugin']} {f['version'] or ''})".rstrip())
        print(f"    architectures: {', '.join(f['architectures'])}")
        if f["templates"]:
            print(f"    templates:     {', '.join(f['templates'])}")
        if f["description"]:
            print(f"    {f['description']}")
    for p in failed:
        print(f"FAILED plugin {p['name']} ({p['distribution']} {p['version']}): {p['error']}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from vlkit.contract.registry import get_registry

    reg = get_registry()
    reg.families()
    fams: dict[str, list[str]] = {}
    for f in reg.families():
        fams.setdefault(f.plugin, []).append(f.name)
    rows = []
    for p in reg.plugins:
        d = p.to_dict()
        d["families"] = fams.get(p.name, [])
        rows.append(d)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No vlkit plugins installed.")
    for r in rows:
        status = "ok" if r["error"] is None else f"FAILED: {r['error']}"
        print(f"{r['name']}  {r['distribution'] or ''} {r['version'] or ''}  [{status}]  families: {', '.join(r['families']) or '-'}")
    return 0


def cmd_scaffold(args: argparse.Namespace) -> int:
    from vlkit.cli.scaffold import ScaffoldError, scaffold

    try:
        path = scaffold(args.name, output_dir=args.output_dir, no_input=args.no_input)
    except ScaffoldError as exc:
        print(f"vlkit scaffold: error: {exc}", file=sys.stderr)
        return 2
    print(f"Created {path}")
    print(f"Next: pip install -e '{path}[test]' pytest && cd {path} && pytest")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkit", description="Run vision-language models fast; plugins add model families.")
    parser.add_argument("--version", action="version", version=f"vlkit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list-models", help="installed model families, their architectures and plugin load errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list_models)

    p = sub.add_parser("plugins", help="installed plugins (loaded or failed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("scaffold", help="create a new model-family plugin package")
    p.add_argument("name", help="family name; the package is vlkit-plugin-NAME")
    p.add_argument("--output-dir", default=".", help="where to create the package (default: .)")
    p.add_argument("--no-input", action="store_true", help="use defaults, ask nothing")
    p.set_defaults(func=cmd_scaffold)

    for add in _model_command_adders():
        add(sub)
    _plugin_commands(sub)
    parser.allow_abbrev = False  # `--model X` must not silently become `--model-name X`
    for sub_parser in sub.choices.values():
        sub_parser.allow_abbrev = False
    return parser


def _model_command_adders() -> list[Any]:
    from vlkit.cli import commands, webui

    return [*commands.ADDERS, webui.add_webui]


def _plugin_commands(sub: argparse._SubParsersAction) -> None:
    from vlkit.contract.registry import get_registry

    reg = get_registry()
    for impl in reg.pm.hook.vlkit_register_commands.get_hookimpls():
        try:
            impl.function(subparsers=sub)
        except Exception as exc:  # noqa: BLE001 - a plugin must never break the CLI
            print(f"vlkit: plugin {impl.plugin_name} failed to add commands: {exc}", file=sys.stderr)


def _version() -> str:
    from vlkit import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
