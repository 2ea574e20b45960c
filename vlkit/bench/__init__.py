"""Benchmarks (see BENCH.md). ``vlkit.bench.text``: the W1 language model against HF generate.

``run_cli(args)`` is what ``vlkit bench`` calls: workload ``w1-text`` runs
:func:`vlkit.bench.text.run_text_bench`; other workloads are looked up as
``vlkit.bench.<workload>.run_cli`` (dashes become underscores).
"""

from __future__ import annotations

import importlib
import json
from typing import Any


def run_cli(args: Any) -> int:
    workload = getattr(args, "workload", "w1-text") or "w1-text"
    if workload == "w1-text":
        from vlkit.bench.text import run_text_bench

        res = run_text_bench(
            num_requests=getattr(args, "requests", 16),
            new_tokens=getattr(args, "new_tokens", 64),
            skip_hf=getattr(args, "skip_hf", False),
            print_table=True,
        )
        out = getattr(args, "output", None)
        if out:
            with open(out, "w") as f:
                json.dump(res, f, indent=2)
        return 0
    try:
        mod = importlib.import_module(f"vlkit.bench.{workload.replace('-', '_')}")
    except ImportError:
        raise SystemExit(f"unknown benchmark workload {workload!r}; available here: w1-text") from None
    return mod.run_cli(args)
