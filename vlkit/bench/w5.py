"""Workload W5: a real-size small VLM on the CPU, where decoding is bound by memory bandwidth.

A LLaVA-1.5 checkpoint with the shapes of a real small one (CLIP ViT-L/14 at 336 px, 576 image
tokens; TinyLlama-1.1B's language model: hidden 2048, MLP 5632, 22 layers, 32 heads, 4 KV heads,
vocab 32000; ~1.4 B parameters, random weights, saved in bf16) is written by the LLaVA plugin's
factory (``size="w5"``). At 1 and at 8 concurrent requests, each a PNG of its own size and a
~20-token question, 128 greedy tokens each (EOS ignored), timed end to end from the image bytes.

Every system runs in its own process (so peak RSS is its own), the runs alternate, and the best
of ``--repeats`` is kept. Peers: HF ``generate`` batched at the matching dtype (bf16 for the int
precisions: transformers has no CPU int4/int8 path without extra packages).

Reported per precision and concurrency: output tok/s, time to first token, peak RSS, and the
decode step against the memory-bandwidth roofline: the bytes one step must read (the LM's weights
at that precision, scales included, plus the KV cache of every sequence) over the read bandwidth
measured in the same run.

With ``--peers hf,openvino`` OpenVINO GenAI's continuous batching and optimum-intel run the same
requests at the same precision (:mod:`vlkit.bench.openvino`), alternated with the others.

``vlkit bench w5 --precision fp32,bf16,int8,int4 [--concurrency 1,8] [--repeats 2] [--peers hf,openvino]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vlkit.bench.text import kv_bytes, run_json_child, weight_bytes  # noqa: F401  (re-exported)

W5_LM = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
             num_key_value_heads=4, vocab_size=32000)
IMAGE_TOKENS = 576


def write_w5_llava(directory: str | Path) -> Path:
    from vlkit.contract.registry import get_registry

    return get_registry().get_family("llava").tiny_checkpoint(Path(directory), size="w5", dtype="bfloat16")


def _child(args: argparse.Namespace) -> dict[str, Any]:
    from vlkit.bench import vlm
    from vlkit.bench.precision import engine_kwargs, hf_dtype
    from vlkit.bench.text import _peak_rss_mb

    reqs = vlm._requests(args.concurrency)
    if args.child == "vlkit":
        blocks = args.concurrency * (-(-(IMAGE_TOKENS + 64 + args.new_tokens) // 16)) + 16
        res = vlm.run_vlkit(Path(args.path), reqs, args.new_tokens, num_blocks=blocks, **engine_kwargs(args.precision))
    else:
        res = vlm.run_hf(Path(args.path), reqs, args.new_tokens, batched=True, dtype=hf_dtype(args.precision))
        res["peak_rss_mb"] = _peak_rss_mb()
    return res


def _run_child(system: str, precision: str, concurrency: int, path: Path, new_tokens: int) -> dict[str, Any]:
    return run_json_child("vlkit.bench.w5", ["--child", system, "--precision", precision, "--concurrency",
                                             str(concurrency), "--path", str(path), "--new-tokens", str(new_tokens)])


def run_w5(precisions: list[str], concurrencies: list[int], new_tokens: int = 128, repeats: int = 2,
           skip_hf: bool = False, checkpoint_dir: str | None = None, peers: tuple[str, ...] = ("hf",),
           openvino_python: str | None = None, openvino_cache: str | None = None) -> dict[str, Any]:
    import torch
    import transformers

    from vlkit.bench.text import measure_bandwidth
    from vlkit.kernels import kernel_status

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(checkpoint_dir or os.path.join(tmp, "w5-llava"))
        if not (path / "config.json").is_file():
            subprocess.run([sys.executable, "-c", f"from vlkit.bench.w5 import write_w5_llava; write_w5_llava({str(path)!r})"],
                           check=True, capture_output=True)
        bw = measure_bandwidth(1024)
        systems = ["vlkit"] + ([] if skip_hf or "hf" not in peers else ["hf"])
        if "openvino" in peers:
            from vlkit.bench import openvino as ovp
            from vlkit.bench.vlm import _requests

            py = ovp.openvino_python(openvino_python)
            cache = Path(openvino_cache or os.path.join(tmp, "openvino"))
            ov_models = {p: ovp.export(py, path, cache, p) for p in precisions}
            ov_reqs = {c: ovp.write_requests(_requests(c), os.path.join(tmp, f"requests-{c}")) for c in concurrencies}
            systems += [f"openvino-{b}" for b in ovp.BACKENDS]
        best: dict[tuple[str, str, int], dict[str, Any]] = {}
        for _ in range(repeats):  # alternated: every system once per round
            for precision in precisions:
                for c in concurrencies:
                    for system in systems:
                        if system == "hf" and precision not in ("fp32", "bf16") and ("hf", "bf16", c) in best:
                            continue  # HF's int* peer is its bf16 run
                        if system.startswith("openvino-"):
                            r = ovp.run(py, ov_models[precision], ov_reqs[c], new_tokens, precision,
                                        system.split("-", 1)[1])
                        else:
                            r = _run_child(system, precision, c, path, new_tokens)
                        key = (system, precision, c)
                        if key not in best or r["tok_per_s"] > best[key]["tok_per_s"]:
                            best[key] = r
        bw = max(bw, measure_bandwidth(1024))  # the better of before and after: a shared machine
    rows = []
    for precision in precisions:
        for c in concurrencies:
            vl = best[("vlkit", precision, c)]
            hf_prec = precision if precision in ("fp32", "bf16") else "bf16"
            hf = best.get(("hf", hf_prec, c)) or best.get(("hf", precision, c))
            ctx = int(vl["mean_prompt_len"] + new_tokens / 2)
            nbytes = weight_bytes(W5_LM, precision) + kv_bytes(W5_LM, c, ctx, precision)
            ideal = nbytes / bw
            ov = {b: best[(f"openvino-{b}", precision, c)] for b in ("genai", "optimum")
                  if (f"openvino-{b}", precision, c) in best}
            rows.append({
                "precision": precision, "concurrency": c, "vlkit": vl, "hf_generate_batched": hf,
                **{f"openvino_{b}": o for b, o in ov.items()},
                **{f"speedup_vs_openvino_{b}": vl["tok_per_s"] / o["tok_per_s"] for b, o in ov.items()},
                "hf_precision": hf_prec if hf else None,
                "speedup_vs_hf": vl["tok_per_s"] / hf["tok_per_s"] if hf else None,
                "roofline": {"bytes_per_step": nbytes, "decode_step_ideal_s": ideal,
                             "decode_step_achieved_s": vl["decode_step_s"], "fraction": ideal / vl["decode_step_s"]},
            })
    return {
        "workload": "w5", "date": time.strftime("%Y-%m-%d"), "new_tokens": new_tokens, "repeats": repeats,
        "model": {"vision": "CLIP ViT-L/14-336 shape", "lm": W5_LM, "image_tokens": IMAGE_TOKENS,
                  "weights": "random, saved in bf16"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "read_bandwidth_GBps": bw / 1e9},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "kernels": kernel_status(),
        "rows": rows,
    }


def format_table(res: dict[str, Any]) -> str:
    lines = [f"W5 (LLaVA, CLIP ViT-L/14-336 + 1.1B LM, random weights), {res['new_tokens']} new tokens, "
             f"read bandwidth {res['machine']['read_bandwidth_GBps']:.1f} GB/s, best of {res['repeats']}",
             "| precision | requests | vlkit tok/s | HF batched tok/s | vs HF | OpenVINO GenAI tok/s | vs GenAI | "
             "TTFT p50 | decode step | roofline | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        vl, hf, rf = r["vlkit"], r["hf_generate_batched"], r["roofline"]
        hf_s = f"{hf['tok_per_s']:.2f} ({r['hf_precision']})" if hf else "-"
        sp = f"{r['speedup_vs_hf']:.2f}x" if r["speedup_vs_hf"] else "-"
        ov = r.get("openvino_genai")
        ov_s = f"{ov['tok_per_s']:.2f} | {r['speedup_vs_openvino_genai']:.2f}x" if ov else "- | -"
        lines.append(f"| {r['precision']} | {r['concurrency']} | {vl['tok_per_s']:.2f} | {hf_s} | {sp} | {ov_s} | "
                     f"{vl['ttft_p50_s'] * 1e3:.0f} ms | {vl['decode_step_s'] * 1e3:.1f} ms "
                     f"(ideal {rf['decode_step_ideal_s'] * 1e3:.1f}) | {rf['fraction'] * 100:.0f} % | "
                     f"{vl['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlkit.bench.w5")
    p.add_argument("--child", choices=["vlkit", "hf"])
    p.add_argument("--precision", default="int4")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--path")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--output")
    p.add_argument("--peers", default="hf")
    p.add_argument("--openvino-python")
    p.add_argument("--openvino-cache")
    args = p.parse_args(argv)
    if args.child:
        args.concurrency = int(args.concurrency)
        print(json.dumps(_child(args)))
        return 0
    res = run_w5(args.precision.split(","), [int(c) for c in args.concurrency.split(",")], args.new_tokens,
                 args.repeats, args.skip_hf, args.path, tuple(args.peers.split(",")), args.openvino_python,
                 args.openvino_cache)
    print(format_table(res))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
