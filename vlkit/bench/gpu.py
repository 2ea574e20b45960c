"""``vlkit bench gpu``: the GPU engine against HF transformers, in one short run.

Workloads (LLaVA-1.5 checkpoints the LLaVA plugin's factory writes, random weights, bf16):

* ``w1``: BENCH.md's W1 (``llava-60m``);
* ``llava-7b``: llava-1.5-7b's shapes (CLIP ViT-L/14-336, 576 image tokens; LLaMA-7B: hidden
  4096, MLP 11008, 32 layers, 32 heads, vocab 32000), built and initialized on the GPU;
* ``tiny``: the test-size LLaVA, so the suite runs the whole command on a CPU.

Each: ``--requests`` (64) requests, each a PNG of its own size and a ~20-token question,
``--new-tokens`` (128) greedy tokens, EOS ignored, timed end to end from the image bytes. vlkit
and HF ``generate`` batched (``LlavaProcessor``, left padding, ``attn_implementation="sdpa"``)
run on the same checkpoint and requests, each in its own process (a fresh GPU, its own peak
memory), the best of ``--repeats`` kept.

Also measured, in vlkit's process: the decode step at full batch (``--requests`` sequences each
holding the mean prompt length plus half the new tokens, stepped 32 times after every sequence
decodes), against the HBM roofline: the bytes a step must read (the LM's bf16 weights plus every
sequence's KV cache) over the device-to-device copy bandwidth measured in the same run.

Output: one table, and ``gpu-<workload>.json`` per workload in ``--output-dir`` with
``speedup_vs_hf`` (vlkit tok/s over HF batched tok/s) and ``roofline.fraction``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vlkit.bench.text import kv_bytes, run_json_child, weight_bytes
from vlkit.bench.vlm import _device

#: workload -> the LLaVA factory's size (the LM's shapes for the roofline are read from the checkpoint)
WORKLOADS: dict[str, str] = {"w1": "w1", "llava-7b": "7b", "tiny": "tiny"}
DEFAULT_WORKLOADS = ("w1", "llava-7b")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_hbm_bandwidth(mb: int = 2048, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written (on CPU: the
    same copy in RAM, so the CPU test of this command has a number)."""
    import torch

    dev = _device()
    n = mb << 20
    src = torch.empty(n, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    _sync()
    return 2 * n * repeats / (time.perf_counter() - t0)


def write_checkpoint(workload: str, directory: str | Path) -> Path:
    """The workload's LLaVA checkpoint (bf16; built on the GPU when there is one)."""
    from vlkit.contract.registry import get_registry

    fam = get_registry().get_family("llava")
    return fam.tiny_checkpoint(Path(directory), size=WORKLOADS[workload], dtype="bfloat16",
                               device=_device())


def lm_shapes(path: str | Path) -> dict[str, Any]:
    """The language model's shapes from the checkpoint's config (for the roofline)."""
    cfg = json.loads((Path(path) / "config.json").read_text())["text_config"]
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    out = {k: cfg[k] for k in keys}
    out["num_key_value_heads"] = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return out


def decode_step_seconds(engine: Any, batch: int, context: int, steps: int = 32, warmup: int = 4) -> dict[str, Any]:
    """Time of one engine step with ``batch`` sequences of ``context`` tokens all decoding."""
    import torch

    from vlkit.config import GenerationConfig

    g = torch.Generator().manual_seed(0)
    ids = [f"decode-step-{i}" for i in range(batch)]
    gen = GenerationConfig(max_new_tokens=steps + warmup + 8, ignore_eos=True)
    for rid in ids:
        engine.add_request(rid, torch.randint(3, engine.vocab_size, (context,), generator=g).tolist(), gen)
    decoding = set()
    while len(decoding) < batch:  # prefill (chunked), until a step samples for every sequence
        decoding = {o.request_id for o in engine.step() if o.new_token_ids}
    graphs = engine.runner.graphs
    before = sum(graphs.replays.values()) if graphs else 0
    for _ in range(warmup):
        engine.step()
    _sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    _sync()
    dt = (time.perf_counter() - t0) / steps
    replayed = (sum(graphs.replays.values()) - before) if graphs else 0
    for rid in ids:
        engine.abort(rid)
    while engine.has_unfinished():  # collect the abort outputs here, not in the caller's next step
        engine.step()
    return {"batch": batch, "context": context, "step_s": dt, "graph_replays": replayed,
            "graph_steps": warmup + steps}


def _vlkit_child(path: Path, requests: int, new_tokens: int, engine: dict[str, Any]) -> dict[str, Any]:
    import torch

    from vlkit.bench import vlm

    reqs = vlm._requests(requests)
    cfg = json.loads((path / "config.json").read_text())
    image_tokens = cfg.get("image_seq_length", 576)
    context = image_tokens + 40 + new_tokens // 2
    # the timed run and the decode-step measurement come one after the other: room for the larger
    # (a 7B-shaped KV block is 8 MB: 64 requests hold ~24 GB)
    blocks = requests * max(-(-(image_tokens + 64 + new_tokens) // 16), -(-(context + 48) // 16)) + 32

    def after(pipe: Any) -> dict[str, Any]:
        eng = pipe.engine
        g = eng.runner.graphs
        step = decode_step_seconds(eng, requests, context)
        return {"decode": step, "attention_backend": eng.runner.attention_backend,
                "cuda_graphs": None if g is None else {"sizes": g.sizes, "capture_s": g.capture_seconds,
                                                       "replays": sum(g.replays.values())}}

    res = vlm.run_vlkit(path, reqs, new_tokens, after=after, num_blocks=blocks,
                        **{"dtype": "bfloat16", "device": _device(), **engine})
    if torch.cuda.is_available():
        res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return res


def _hf_child(path: Path, requests: int, new_tokens: int) -> dict[str, Any]:
    import torch

    from vlkit.bench import vlm

    res = vlm.run_hf(path, vlm._requests(requests), new_tokens, batched=True, dtype=torch.bfloat16)
    if torch.cuda.is_available():
        res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return res


def _run_child(argv: list[str]) -> dict[str, Any]:
    return run_json_child("vlkit.bench.gpu", argv)


def run_workload(workload: str, requests: int = 64, new_tokens: int = 128, repeats: int = 1, skip_hf: bool = False,
                 engine: dict[str, Any] | None = None, checkpoint_dir: str | None = None) -> dict[str, Any]:
    """One workload: checkpoint, vlkit and HF runs (alternated, best of ``repeats``), roofline."""
    import torch
    import transformers

    engine = dict(engine or {})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(checkpoint_dir or os.path.join(tmp, workload))
        t0 = time.perf_counter()
        if not (path / "config.json").is_file():
            _run_child(["--write", workload, "--path", str(path)])
        build_s = time.perf_counter() - t0
        common = ["--path", str(path), "--requests", str(requests), "--new-tokens", str(new_tokens)]
        vl = hf = None
        for _ in range(max(1, repeats)):
            r = _run_child(["--child", "vlkit", *common, "--engine", json.dumps(engine)])
            vl = r if vl is None or r["tok_per_s"] > vl["tok_per_s"] else vl
            if not skip_hf:
                h = _run_child(["--child", "hf", *common])
                hf = h if hf is None or h["tok_per_s"] > hf["tok_per_s"] else hf
        shapes = lm_shapes(path)
    bw = measure_hbm_bandwidth(256 if _device() == "cpu" else 2048)
    step = vl["decode"]
    nbytes = weight_bytes(shapes, "bf16") + kv_bytes(shapes, step["batch"], step["context"], "bf16")
    ideal = nbytes / bw
    dev = _device()
    return {
        "workload": workload,
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
        "dtype": "bfloat16",
        "num_requests": requests,
        "new_tokens": new_tokens,
        "repeats": max(1, repeats),
        "checkpoint_build_s": build_s,
        "engine": engine,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "triton": _version("triton"), "cuda": torch.version.cuda},
        "vlkit": vl,
        "hf_generate_batched": hf,
        "speedup_vs_hf": vl["tok_per_s"] / hf["tok_per_s"] if hf else None,
        "roofline": {"hbm_copy_GBps": bw / 1e9, "bytes_per_step": nbytes, "decode_step_ideal_s": ideal,
                     "decode_step_achieved_s": step["step_s"], "fraction": ideal / step["step_s"],
                     "batch": step["batch"], "context": step["context"]},
    }


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def format_table(results: list[dict[str, Any]]) -> str:
    head = (f"| workload | device | vlkit tok/s | HF batched tok/s | speed-up | TTFT p50 s | decode step ms "
            f"(batch) | roofline | graphs |\n|{'---|' * 9}")
    rows = [head]
    for r in results:
        vl, hf, rf = r["vlkit"], r["hf_generate_batched"], r["roofline"]
        g = vl.get("cuda_graphs")
        graphs = f"{len(g['sizes'])} sizes, {r['vlkit']['decode']['graph_replays']}/{r['vlkit']['decode']['graph_steps']}" \
            if g else "off"
        rows.append(
            f"| {r['workload']} | {r['device']} | {vl['tok_per_s']:.1f} | {hf['tok_per_s']:.1f} | "
            f"{r['speedup_vs_hf']:.2f}× | {vl['ttft_p50_s']:.3f} | {rf['decode_step_achieved_s'] * 1e3:.2f} "
            f"({rf['batch']}) | {rf['fraction'] * 100:.0f} % | {graphs} |" if hf else
            f"| {r['workload']} | {r['device']} | {vl['tok_per_s']:.1f} | — | — | {vl['ttft_p50_s']:.3f} | "
            f"{rf['decode_step_achieved_s'] * 1e3:.2f} ({rf['batch']}) | {rf['fraction'] * 100:.0f} % | {graphs} |")
    return "\n".join(rows)


def run_cli(args: argparse.Namespace) -> int:
    """``vlkit bench gpu`` (``args`` from :func:`vlkit.bench.cli.add_arguments`)."""
    names = [w for w in (args.workloads or ",".join(DEFAULT_WORKLOADS)).split(",") if w]
    bad = [w for w in names if w not in WORKLOADS]
    if bad:
        print(f"vlkit bench gpu: unknown workload(s) {', '.join(bad)}; choose from {', '.join(WORKLOADS)}",
              file=sys.stderr)
        return 2
    if _device() != "cuda" and not args.allow_cpu:
        print("vlkit bench gpu: no CUDA device (--allow-cpu runs it on the CPU, for testing the command)",
              file=sys.stderr)
        return 2
    engine: dict[str, Any] = {}
    if args.enforce_eager:
        engine["enforce_eager"] = True
    if args.attention_backend:
        engine["attention_backend"] = args.attention_backend
    out_dir = Path(args.output_dir or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for w in names:
        res = run_workload(w, requests=args.requests if args.requests is not None else 64,
                           new_tokens=args.new_tokens or 128, repeats=args.repeats or 1, skip_hf=args.skip_hf,
                           engine=engine)
        results.append(res)
        path = out_dir / f"gpu-{w}.json"
        path.write_text(json.dumps(res, indent=2))
        print(f"wrote {path}", file=sys.stderr)
    print(format_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlkit.bench.gpu", description="vlkit bench gpu's child processes")
    p.add_argument("--write", choices=sorted(WORKLOADS))
    p.add_argument("--child", choices=["vlkit", "hf"])
    p.add_argument("--path", required=True)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--engine", default="{}", help="EngineConfig fields as JSON")
    a = p.parse_args(argv)
    if a.write:
        write_checkpoint(a.write, a.path)
        print(json.dumps({"path": a.path}))
        return 0
    if a.child == "vlkit":
        res = _vlkit_child(Path(a.path), a.requests, a.new_tokens, json.loads(a.engine))
    else:
        res = _hf_child(Path(a.path), a.requests, a.new_tokens)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
