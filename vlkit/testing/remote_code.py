"""Checkpoint code that must never run, and a pseudo-terminal to prove nothing prompts.

``plant_checkpoint_code(directory)`` names checkpoint code in ``config.json``'s and
``tokenizer_config.json``'s ``auto_map`` (keeping the names a released checkpoint already has)
and writes each named module as a file that ends the process with exit status
:data:`RAN_CODE_STATUS` the moment it is imported. ``run_on_terminal(argv)`` runs a command with
stdin, stdout and stderr on a pseudo-terminal, where transformers would print
``Do you wish to run the custom code? [y/N]`` and wait, and returns its status and output.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RAN_CODE_STATUS", "plant_checkpoint_code", "run_on_terminal"]

RAN_CODE_STATUS = 97
_PLANTED = f"import os\nos._exit({RAN_CODE_STATUS})  # checkpoint code ran\n"
_DEFAULT_MAP = {
    "config.json": {"AutoConfig": "configuration_planted.PlantedConfig",
                    "AutoModel": "modeling_planted.PlantedModel",
                    "AutoModelForCausalLM": "modeling_planted.PlantedModel"},
    "tokenizer_config.json": {"AutoTokenizer": ["tokenization_planted.PlantedTokenizer", None]},
}


def _modules(auto_map: dict) -> set[str]:
    out = set()
    for ref in auto_map.values():
        for r in ref if isinstance(ref, list) else [ref]:
            if isinstance(r, str):
                out.add(r.split("--")[-1].rsplit(".", 1)[0])
    return out


def plant_checkpoint_code(directory: str | Path) -> list[str]:
    """Give the checkpoint ``auto_map`` entries (where it has none) and a module for every name
    its ``auto_map`` entries use; each module exits the process when imported. Returns the files."""
    d = Path(directory)
    written = []
    for name, default in _DEFAULT_MAP.items():
        path = d / name
        if not path.is_file():
            continue
        cfg = json.loads(path.read_text())
        if not cfg.get("auto_map"):
            cfg["auto_map"] = default
            path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        for sub in [cfg, *(v for v in cfg.values() if isinstance(v, dict))]:  # llm_config's own auto_map too
            for module in _modules(sub.get("auto_map") or {}):
                f = d / f"{module}.py"
                f.write_text(_PLANTED)
                written.append(f.name)
    return sorted(set(written))


def run_on_terminal(argv: Sequence[str], timeout: float = 300, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as stdin/stdout/stderr; return (exit status, output).

    Nothing is ever typed: a command that waits for an answer runs into ``timeout`` and is
    killed (status -9)."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env=dict(os.environ, **(env or {})))
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            out += chunk
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        rc = proc.wait(timeout=30)
    finally:
        os.close(master)
    return rc, out.decode(errors="replace")
