"""``vlkit bench replicas``: one endpoint on Ray Serve with 1, then 2 (…) engine replicas.

A tiny random-weight LLaVA (the LLaVA plugin's test size), ``--requests`` chat requests (64)
of ``--new-tokens`` tokens (64, EOS ignored), each its own conversation (so the router spreads
them), sent by ``--concurrency`` (16) HTTP clients at once through the router
(:mod:`vlkit.serve.ray`). For each replica count: a fresh local Ray instance, one warm-up round,
then the best of ``--repeats`` (2) rounds. Reported: output tokens/s, p50 / p95 request latency,
and how many requests each replica served.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _round(url: str, requests: int, new_tokens: int, concurrency: int, tag: str) -> dict[str, Any]:
    import httpx

    def one(i: int) -> tuple[int, float, str]:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": "tiny", "messages": [{"role": "user", "content": f"{tag} request {i}"}],
            "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True})
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"], time.perf_counter() - t0, r.headers.get("x-vlkit-replica", "-")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = sorted(d[1] for d in done)
    served: dict[str, int] = {}
    for d in done:
        served[d[2]] = served.get(d[2], 0) + 1
    return {"seconds": wall, "output_tokens": sum(d[0] for d in done), "tok_per_s": sum(d[0] for d in done) / wall,
            "latency_p50_s": statistics.median(lat), "latency_p95_s": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))],
            "served_by_replica": sorted(served.values(), reverse=True)}


def run_replicas(counts: tuple[int, ...] = (1, 2), requests: int = 64, new_tokens: int = 64, concurrency: int = 16,
                 repeats: int = 2, checkpoint_dir: str | None = None) -> dict[str, Any]:
    import ray
    from ray import serve

    from vlkit.contract.registry import get_registry
    from vlkit.serve.ray import build_app
    from vlkit.testing.server import free_port

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(checkpoint_dir or os.path.join(tmp, "tiny-llava"))
        if not (path / "config.json").is_file():
            get_registry().get_family("llava").tiny_checkpoint(path)
        blocks = requests * (-(-(200 + new_tokens) // 16)) + 16
        for n in counts:
            ray.init(num_cpus=max(4, 2 * n), include_dashboard=False, log_to_driver=False)
            port = free_port()
            try:
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                serve.run(build_app(str(path), replicas=n, engine={"num_blocks": blocks, "device": "cpu"},
                                    server={"model_name": "tiny"}), name="vlkit", route_prefix="/")
                url = f"http://127.0.0.1:{port}"
                _round(url, requests, new_tokens, concurrency, "warm-up")
                best = None
                for r in range(max(1, repeats)):
                    res = _round(url, requests, new_tokens, concurrency, f"round {r}")
                    best = res if best is None or res["tok_per_s"] > best["tok_per_s"] else best
            finally:
                serve.shutdown()
                ray.shutdown()
            results.append({"replicas": n, **best})
    base = results[0]["tok_per_s"]
    for r in results:
        r["speedup_vs_first"] = r["tok_per_s"] / base
    return {"workload": "replicas", "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
            "requests": requests, "new_tokens": new_tokens, "concurrency": concurrency, "repeats": max(1, repeats),
            "results": results}


def format_table(res: dict[str, Any]) -> str:
    rows = ["| replicas | output tok/s | vs first | latency p50 s | p95 s | requests per replica |",
            "|---|---|---|---|---|---|"]
    for r in res["results"]:
        rows.append(f"| {r['replicas']} | {r['tok_per_s']:.1f} | {r['speedup_vs_first']:.2f}× | "
                    f"{r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | {r['served_by_replica']} |")
    return "\n".join(rows)


def run_cli(args: Any) -> int:
    """``vlkit bench replicas`` (``args`` from :func:`vlkit.bench.cli.add_arguments`)."""
    try:
        import ray.serve  # noqa: F401
    except ImportError as exc:
        print(f"vlkit bench replicas: needs the ray extra: pip install 'vlkit[ray]' ({exc})", file=sys.stderr)
        return 2
    counts = tuple(int(c) for c in (args.replica_counts or "1,2").split(","))
    res = run_replicas(counts, requests=args.requests, new_tokens=args.new_tokens or 64,
                       concurrency=int(args.concurrency) if args.concurrency else 16,
                       repeats=args.repeats or 2)
    print(format_table(res))
    out = Path(args.output or f"bench-replicas-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0
