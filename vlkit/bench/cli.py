"""``vlkit bench WORKLOAD``: print one table, write a JSON record (and a PNG plot for w1 and w4).

``--precision {fp32,bf16,int8,int4,int4-asym}`` (w1, w1-text; a comma-separated list for w5) runs vlkit
at that precision and HF at the matching dtype; ``w5`` is a real-size small LLaVA at 1 and 8
concurrent requests (:mod:`vlkit.bench.w5`); ``accuracy`` measures each precision's agreement with fp32
(:mod:`vlkit.bench.accuracy`). ``python -m vlkit.bench.cli`` takes the same arguments as
``vlkit bench``. ``gpu`` runs W1 and a 7B-shaped LLaVA on CUDA against HF in bf16, with the decode
step against the HBM roofline (:mod:`vlkit.bench.gpu`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from vlkit.config import ATTENTION_BACKENDS

PRECISION_CHOICES = ("fp32", "bf16", "int8", "int4", "int4-asym")


def run_cli(args: argparse.Namespace) -> int:
    workload = args.workload
    precisions = (getattr(args, "precision", None) or ("fp32,bf16,int8,int4" if workload == "w5" else "fp32")).split(",")
    bad = [p for p in precisions if p not in PRECISION_CHOICES]
    if bad or (len(precisions) > 1 and workload != "w5"):
        print(f"vlkit bench: --precision takes {'a comma-separated list of ' if workload == 'w5' else 'one of '}"
              f"{', '.join(PRECISION_CHOICES)}; got {args.precision!r}", file=sys.stderr)
        return 2
    precision = precisions[0]
    if workload == "gpu":
        from vlkit.bench import gpu

        if getattr(args, "requests", None) is None:
            args.requests = 64
        return gpu.run_cli(args)
    if workload == "replicas":
        from vlkit.bench import replicas

        if getattr(args, "requests", None) is None:
            args.requests = 64
        return replicas.run_cli(args)
    if getattr(args, "requests", None) is None:
        args.requests = 16
    if getattr(args, "new_tokens", None) is None:
        args.new_tokens = 128 if workload == "w5" else 64
    output = Path(args.output) if args.output else Path(f"bench-{workload}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    if workload in ("w1", "w2", "w3", "w4", "w5"):
        from vlkit.contract.registry import get_registry

        try:
            get_registry().get_family("llava")
        except KeyError:
            print(f"vlkit bench {workload}: the workload runs a LLaVA checkpoint; install vlkit-plugin-llava "
                  "(w1-text and accuracy need no plugin)", file=sys.stderr)
            return 2
    if workload == "w1":
        from vlkit.bench import vlm
        from vlkit.bench.openvino import OpenVINOUnavailable

        peers = tuple(p for p in (getattr(args, "peers", None) or "hf").split(",") if p)
        if set(peers) - {"hf", "openvino"}:
            print(f"vlkit bench: --peers takes hf and/or openvino, got {args.peers!r}", file=sys.stderr)
            return 2
        try:
            res = vlm.run_w1(args.requests, args.new_tokens, skip_hf=args.skip_hf, precision=precision,
                             hf_sequential=not getattr(args, "skip_hf_sequential", False), peers=peers,
                             repeats=getattr(args, "repeats", 1) or 1,
                             openvino_python=getattr(args, "openvino_python", None),
                             openvino_cache=getattr(args, "openvino_cache", None))
        except OpenVINOUnavailable as exc:
            print(f"vlkit bench w1: {exc}", file=sys.stderr)
            return 2
        print(vlm.format_table(res))
        js, png = vlm.save(res, output)
        print(f"wrote {js}" + (f" and {png}" if png else ""))
        return 0
    if workload == "w5":
        from vlkit.bench import w5
        from vlkit.bench.openvino import OpenVINOUnavailable

        try:
            res = w5.run_w5(precisions, [int(c) for c in str(args.concurrency or "1,8").split(",")], args.new_tokens,
                            args.repeats or 2, args.skip_hf, peers=tuple((args.peers or "hf").split(",")),
                            openvino_python=args.openvino_python, openvino_cache=args.openvino_cache)
        except OpenVINOUnavailable as exc:
            print(f"vlkit bench w5: {exc}", file=sys.stderr)
            return 2
        print(w5.format_table(res))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2))
        print(f"wrote {output}")
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``vlkit bench``'s arguments (the CLI's subcommand and ``python -m vlkit.bench.cli``)."""
    p.add_argument("workload", nargs="?", default="w1", help="w1 (LLaVA W1), w1-text (its language model alone), "
                   "gpu (W1 and a 7B-shaped LLaVA on CUDA against HF, bf16), replicas (1 vs 2 Ray Serve replicas), "
                   "w2 (multi-turn), w3 (vision encoder batching), w4 (scaling with load), w5 (a real-size small "
                   "LLaVA, memory-bound), accuracy (each precision against fp32), or a plugin's (mobilevlm)")
    p.add_argument("--precision", default=None, help="vlkit's precision: " + ", ".join(PRECISION_CHOICES)
                   + " (int*: weight-only, bf16 activations); HF runs at the matching dtype. w5 takes a "
                   "comma-separated list (default fp32,bf16,int8,int4)")
    p.add_argument("--requests", type=int, default=None, help="requests (16; gpu: 64)")
    p.add_argument("--new-tokens", type=int, default=None, help="new tokens a request (64; w5, gpu: 128)")
    p.add_argument("--concurrency", default=None, help="w5: concurrent requests, comma-separated (1,8); "
                   "replicas: HTTP clients at once (16)")
    p.add_argument("--replica-counts", default=None, help="replicas: engine replica counts to compare (1,2)")
    p.add_argument("--repeats", type=int, default=None, help="alternated rounds, best kept (w5: 2, w1: 1)")
    p.add_argument("--peers", default="hf", help="w1, w5: comma-separated peers, hf and/or openvino")
    p.add_argument("--openvino-python", default=None, help="the Python of the OpenVINO venv "
                   "($VLKIT_OPENVINO_PYTHON; make one with python -m vlkit.bench.openvino setup DIR)")
    p.add_argument("--openvino-cache", default=None, help="where OpenVINO exports are kept between runs")
    p.add_argument("--output", default=None, help="write the JSON record here (and a PNG next to it)")
    p.add_argument("--skip-hf", action="store_true", help="measure vlkit only")
    p.add_argument("--skip-hf-sequential", action="store_true", help="w1: skip HF one request at a time")
    g = p.add_argument_group("gpu (vlkit bench gpu: vlkit against HF generate batched, bf16, on CUDA)")
    g.add_argument("--workloads", default=None, help="comma-separated: w1, llava-7b (the default: both), tiny")
    g.add_argument("--output-dir", default=None, help="where gpu-<workload>.json go (default: .)")
    g.add_argument("--enforce-eager", action="store_true", help="vlkit without CUDA graphs")
    g.add_argument("--attention-backend", default=None, choices=ATTENTION_BACKENDS)
    g.add_argument("--allow-cpu", action="store_true", help="run on the CPU (to test the command)")


def main(argv: list[str] | None = None) -> int:
    """``python -m vlkit.bench.cli``: ``vlkit bench``'s arguments, ``--precision`` included."""
    p = argparse.ArgumentParser(prog="python -m vlkit.bench.cli", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
