"""Text benchmark: the W1 language model, vlkit's engine against HF ``generate`` in one run.

The W1 LM of BENCH.md (LLaMA, hidden 512, MLP 1408, 8 layers, 8 heads, 4 KV heads, vocab 32000,
fp32, random weights) is written as a real checkpoint in a temp dir. ``num_requests`` prompts of
different lengths (about 20-40 tokens) are generated greedily for ``new_tokens`` tokens each with
EOS ignored, by HF ``generate`` (whole batch at once, left padded, ``torch.inference_mode()``)
and by vlkit's engine (all requests submitted at once). Reported: output tokens/s of both and
their ratio, vlkit's time to first token (p50/p95), peak RSS, and the roofline fraction of a
vlkit decode step: ``max(bytes / bandwidth, flops / peak) / achieved step time`` with bandwidth
and matmul throughput measured in the same run.

Run: ``python -m vlkit.bench.text [--requests 16] [--new-tokens 64] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from typing import Any

import torch

W1_LM = dict(
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_w1_checkpoint(path: str, seed: int = 0) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**W1_LM))
    model.eval().save_pretrained(path)
    return path


def make_prompts(n: int, seed: int = 0, lo: int = 20, hi: int = 40) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(3, W1_LM["vocab_size"], (k,), generator=g).tolist() for k in lens]


# -- child processes -------------------------------------------------------------------------
def run_json_child(module: str, argv: list[str]) -> dict[str, Any]:
    """Run ``python -m module *argv`` and return the JSON object on its last stdout line (each
    system of a benchmark measured in its own process: its own peak memory, a fresh device)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", module, *argv]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- machine limits --------------------------------------------------------------------------
def measure_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s (a sum over a buffer far larger than the caches)."""
    x = torch.ones(mb * (1 << 20) // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * 4 / best


def measure_matmul(m: int, k: int, n: int, repeats: int = 10) -> float:
    """fp32 matmul throughput in FLOP/s for an ``[m, k] @ [k, n]`` product: the faster of
    ``torch.matmul`` and, where vlkit uses it, oneDNN with a prepacked weight (about twice
    MKL's speed on some CPUs), so that the roofline holds vlkit to the best this CPU can do."""
    from vlkit.layers.linear import _onednn_linear_ok

    a, b = torch.randn(m, k), torch.randn(k, n)
    runs = [lambda: a @ b]
    if _onednn_linear_ok():
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), m)
        runs.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    reps = max(repeats, int(2e9 / (2 * m * k * n)))
    best = 0.0
    for run in runs:
        for _ in range(2):
            run()
        t = time.perf_counter()
        for _ in range(reps):
            run()
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t))
    return best


def decode_step_cost(batch: int, context: int, cfg: dict[str, Any] = W1_LM) -> tuple[float, float]:
    """(bytes read, FLOPs) of one decode step of ``batch`` sequences with ``context`` tokens each."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kvh, vocab = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    d = h // heads
    per_layer = h * (heads * d) + 2 * h * (kvh * d) + (heads * d) * h + 3 * h * inter + 2 * h
    weights = layers * per_layer + h + vocab * h  # + final norm + LM head (embedding rows are gathered)
    kv_bytes = 2 * layers * batch * context * kvh * d * 4
    flops = 2 * weights * batch + 4 * layers * batch * context * heads * d
    return weights * 4 + kv_bytes, flops


def weight_bytes(cfg: dict[str, Any], precision: str, group: int = 128) -> float:
    """Bytes of the LM's weights one decode step reads at ``precision`` (every linear layer and
    the LM head, with their scales; the embedding rows gathered are left out)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kvh, vocab = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    d = h // heads
    shapes = [(heads * d, h), (2 * kvh * d, h), (h, heads * d), (2 * inter, h), (h, inter)] * layers + [(vocab, h)]
    total = 0.0
    for n, k in shapes:
        if precision == "fp32":
            total += 4 * n * k
        elif precision == "bf16":
            total += 2 * n * k
        elif precision == "int8":
            total += n * k + 2 * n
        else:  # int4: half a byte a weight, fp32 scale (and zero when asymmetric) per group
            total += n * k / 2 + n * (k // group) * 4 * (2 if precision == "int4-asym" else 1)
    return total + 2 * h * layers * (4 if precision == "fp32" else 2)  # the norms


def kv_bytes(cfg: dict[str, Any], batch: int, context: int, precision: str) -> float:
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * batch * context * cfg["num_key_value_heads"] * d * (4 if precision == "fp32" else 2)


# -- peers -----------------------------------------------------------------------------------
def run_hf(path: str, prompts: list[list[int]], new_tokens: int, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    from transformers import AutoModelForCausalLM
    from transformers import GenerationConfig as HFGen

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    gen = HFGen(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids[:2, -4:], attention_mask=mask[:2, -4:], generation_config=HFGen(
            max_new_tokens=2, do_sample=False, pad_token_id=0, eos_token_id=None))  # warm-up
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, generation_config=gen)
        elapsed = time.perf_counter() - t
    n_out = (out.shape[1] - width) * len(prompts)
    del model
    return {"seconds": elapsed, "output_tokens": n_out, "tok_per_s": n_out / elapsed}


def run_vlkit(path: str, prompts: list[list[int]], new_tokens: int, engine_kwargs: dict | None = None) -> dict[str, Any]:
    from vlkit.config import EngineConfig, GenerationConfig
    from vlkit.engine.engine import LLMEngine
    from vlkit.engine.loader import text_model_spec

    blocks = sum(-(-(len(p) + new_tokens) // 16) for p in prompts) + 8
    cfg = EngineConfig(**{"device": "cpu", "dtype": "float32", "num_blocks": blocks, **(engine_kwargs or {})})
    gen = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    with LLMEngine(text_model_spec(path), cfg) as eng:
        eng.generate([p[:8] for p in prompts[:2]], GenerationConfig(max_new_tokens=2, ignore_eos=True))  # warm-up
        eng.block_manager.enable_prefix_caching = False  # measure full prefill work
        t0 = time.perf_counter()
        for i, p in enumerate(prompts):
            eng.add_request(f"b{i}", p, gen)
        first: dict[str, float] = {}
        n_out = 0
        decode_steps: list[float] = []
        while eng.has_unfinished():
            ts = time.perf_counter()
            outs = eng.step()
            te = time.perf_counter()
            if len(outs) == len(prompts) and all(o.request_id in first for o in outs):
                decode_steps.append(te - ts)
            for o in outs:
                n_out += len(o.new_token_ids)
                first.setdefault(o.request_id, te - t0)
        elapsed = time.perf_counter() - t0
        peak = _peak_rss_mb()
    ttft = sorted(first.values())
    return {
        "seconds": elapsed,
        "output_tokens": n_out,
        "tok_per_s": n_out / elapsed,
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p95_s": ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))],
        "decode_step_s": statistics.median(decode_steps) if decode_steps else float("nan"),
        "peak_rss_mb": peak,
    }


def run_text_bench(
    num_requests: int = 16,
    new_tokens: int = 64,
    skip_hf: bool = False,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    print_table: bool = False,
    num_threads: int | None = None,
    repeats: int = 2,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Benchmark the W1 language model; returns every figure as a dict (see module doc).

    ``num_threads`` sets torch's CPU threads for both peers (default: torch's choice);
    ``checkpoint_dir`` reuses (or keeps) the written checkpoint; each peer runs ``repeats``
    times, alternating, and its fastest run is reported (the machine may be shared).
    """
    import transformers

    from vlkit.bench.precision import engine_kwargs, hf_dtype

    engine = engine_kwargs(precision)
    if num_threads:
        torch.set_num_threads(num_threads)

    prompts = make_prompts(num_requests, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint_dir or os.path.join(tmp, "w1-lm")
        if not os.path.isfile(os.path.join(path, "config.json")):
            write_w1_checkpoint(path, seed)
        bw = measure_bandwidth()
        peak = measure_matmul(1024, 1024, 1024)
        decode_mm = measure_matmul(num_requests, 512, 2048)
        vl_runs, hf_runs = [], []
        for _ in range(max(1, repeats)):
            vl_runs.append(run_vlkit(path, prompts, new_tokens, engine))
            if not skip_hf:
                hf_runs.append(run_hf(path, prompts, new_tokens, hf_dtype(precision)))
        vl = max(vl_runs, key=lambda r: r["tok_per_s"])
        vl["peak_rss_mb"] = vl_runs[0]["peak_rss_mb"]  # before HF ever loaded
        hf = max(hf_runs, key=lambda r: r["tok_per_s"]) if hf_runs else None
    ctx = statistics.mean(len(p) for p in prompts) + new_tokens / 2
    nbytes, flops = decode_step_cost(num_requests, int(ctx))
    ideal = max(nbytes / bw, flops / peak)
    res: dict[str, Any] = {
        "workload": "w1-text",
        "precision": precision,
        "num_requests": num_requests,
        "new_tokens": new_tokens,
        "prompt_lens": [len(p) for p in prompts],
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "read_bandwidth_GBps": bw / 1e9,
            "matmul_GFLOPs_1024": peak / 1e9,
            f"matmul_GFLOPs_{num_requests}x512x2048": decode_mm / 1e9,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "repeats": repeats,
        "vlkit": vl,
        "hf_generate_batched": hf,
        "all_runs_tok_per_s": {"vlkit": [r["tok_per_s"] for r in vl_runs],
                               "hf": [r["tok_per_s"] for r in hf_runs]},
        "speedup_vs_hf": (vl["tok_per_s"] / hf["tok_per_s"]) if hf else None,
        "roofline": {
            "decode_step_ideal_s": ideal,
            "decode_step_achieved_s": vl["decode_step_s"],
            "fraction": ideal / vl["decode_step_s"],
            "bytes_per_step": nbytes,
            "flops_per_step": flops,
        },
    }
    if print_table:
        print(format_table(res))
    return res


def format_table(res: dict[str, Any]) -> str:
    vl, hf = res["vlkit"], res["hf_generate_batched"]
    rows = [
        ("workload", f"{res['workload']}: {res['num_requests']} requests x {res['new_tokens']} new tokens"),
        ("vlkit output tok/s", f"{vl['tok_per_s']:.1f}"),
        ("HF generate (batched) tok/s", f"{hf['tok_per_s']:.1f}" if hf else "skipped"),
        ("speedup vs HF", f"{res['speedup_vs_hf']:.2f}x" if hf else "-"),
        ("vlkit TTFT p50 / p95", f"{vl['ttft_p50_s'] * 1e3:.0f} ms / {vl['ttft_p95_s'] * 1e3:.0f} ms"),
        ("vlkit decode step", f"{vl['decode_step_s'] * 1e3:.1f} ms"),
        ("roofline step / fraction",
         f"{res['roofline']['decode_step_ideal_s'] * 1e3:.1f} ms / {res['roofline']['fraction'] * 100:.0f} %"),
        ("read bandwidth / matmul", f"{res['machine']['read_bandwidth_GBps']:.1f} GB/s / "
                                    f"{res['machine']['matmul_GFLOPs_1024']:.0f} GFLOP/s"),
        ("peak RSS (vlkit, before HF loads)", f"{vl['peak_rss_mb']:.0f} MB"),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for both peers")
    ap.add_argument("--repeats", type=int, default=2, help="runs per peer (fastest reported)")
    ap.add_argument("--json", default=None, help="write the record here")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "int4", "int4-asym"],
                    help="vlkit's precision (int*: weight-only, bf16 activations); HF runs at the matching dtype")
    a = ap.parse_args(argv)
    res = run_text_bench(a.requests, a.new_tokens, skip_hf=a.skip_hf, print_table=True, num_threads=a.threads,
                         repeats=a.repeats, precision=a.precision)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
