"""``vlkit bench WORKLOAD``: print one table, write a JSON record (and a PNG plot for w1 and w4).

``--precision {fp32,bf16,int8,int4,int4-asym}`` (w1, w1-text) runs vlkit at that precision and HF at
the matching dtype; ``accuracy`` measures each precision's agreement with fp32
(:mod:`vlkit.bench.accuracy`). ``python -m vlkit.bench.cli`` takes the same arguments as
``vlkit bench``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

PRECISION_CHOICES = ("fp32", "bf16", "int8", "int4", "int4-asym")


def run_cli(args: argparse.Namespace) -> int:
    workload = args.workload
    precision = getattr(args, "precision", None) or "fp32"
    output = Path(args.output) if args.output else Path(f"bench-{workload}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if workload in ("w1", "w2", "w3", "w4"):
        from vlkit.contract.registry import get_registry

        try:
            get_registry().get_family("llava")
        except KeyError:
            print(f"vlkit bench {workload}: the workload runs a LLaVA checkpoint; install vlkit-plugin-llava "
                  "(w1-text and accuracy need no plugin)", file=sys.stderr)
            return 2
    if workload == "w1":
        from vlkit.bench import vlm

        res = vlm.run_w1(args.requests, args.new_tokens, skip_hf=args.skip_hf, precision=precision,
                         hf_sequential=not getattr(args, "skip_hf_sequential", False))
        print(vlm.format_table(res))
        js, png = vlm.save(res, output)
        print(f"wrote {js}" + (f" and {png}" if png else ""))
        return 0
    if workload == "w1-text":
        from vlkit.bench import text

        res = text.run_text_bench(num_requests=args.requests, new_tokens=args.new_tokens, skip_hf=args.skip_hf,
                                  print_table=True, precision=precision)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2))
        print(f"wrote {output}")
        return 0
    if workload == "accuracy":
        from vlkit.bench import accuracy

        res = accuracy.run_accuracy()
        print(accuracy.format_table(res))
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
        print(f"vlkit bench: unknown workload {workload!r}; choose w1, w1-text, w2, w3, w4, accuracy, "
              "or a plugin's (e.g. mobilevlm)")
        return 2
    return int(mod.run_cli(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """``python -m vlkit.bench.cli``: ``vlkit bench``'s arguments, ``--precision`` included."""
    p = argparse.ArgumentParser(prog="python -m vlkit.bench.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("workload", nargs="?", default="w1")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--output", default=None)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-hf-sequential", action="store_true", help="w1: skip HF one request at a time")
    p.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                   help="vlkit's precision (int*: weight-only, bf16 activations); HF at the matching dtype")
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
