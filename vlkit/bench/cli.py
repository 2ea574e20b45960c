"""``vlkit bench WORKLOAD``: print one table, write a JSON record (and a PNG plot for w1 and w4)."""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path


def run_cli(args: argparse.Namespace) -> int:
    workload = args.workload
    output = Path(args.output) if args.output else Path(f"bench-{workload}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if workload == "w1":
        from vlkit.bench import vlm

        res = vlm.run_w1(args.requests, args.new_tokens, skip_hf=args.skip_hf)
        print(vlm.format_table(res))
        js, png = vlm.save(res, output)
        print(f"wrote {js}" + (f" and {png}" if png else ""))
        return 0
    if workload == "w1-text":
        from vlkit.bench import text

        res = text.run_text_bench(num_requests=args.requests, new_tokens=args.new_tokens, skip_hf=args.skip_hf,
                                  print_table=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2))
        print(f"wrote {output}")
        return 0
    if workload in ("w2", "w3", "w4"):
        from vlkit.bench import workloads

        if workload == "w2":
            res = workloads.run_w2()
        elif workload == "w3":
            res = workloads.run_w3()
        else:
            res = workloads.run_w4(new_tokens=args.new_tokens)
        print(workloads.format_table(res))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2))
        png = workloads.plot(res, output.with_suffix(".png"))
        print(f"wrote {output}" + (f" and {png}" if png else ""))
        return 0
    try:  # a plugin's own workload: vlkit_plugin_NAME.bench.run_cli
        mod = importlib.import_module(f"vlkit_plugin_{workload.replace('-', '_')}.bench")
    except ImportError:
        print(f"vlkit bench: unknown workload {workload!r}; choose w1, w1-text, w2, w3, w4, or a plugin's (e.g. mobilevlm)")
        return 2
    return int(mod.run_cli(args) or 0)
