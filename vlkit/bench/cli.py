"""``vlkit bench WORKLOAD``: print one table, write a JSON record and a PNG plot."""

from __future__ import annotations

import argparse
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
    elif workload == "w1-text":
        from vlkit.bench import text

        res = text.run_text_bench(args.requests, args.new_tokens, skip_hf=args.skip_hf)
        print(text.format_table(res))
        output.write_text(json.dumps(res, indent=2))
        js, png = output, None
    else:
        print(f"vlkit bench: unknown workload {workload!r}; choose w1 or w1-text")
        return 2
    print(f"wrote {js}" + (f" and {png}" if png else ""))
    return 0
