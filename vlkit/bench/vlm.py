"""Workload W1 (``llava-60m``, shared/BENCH.md): vlkit against HF transformers in one run.

A LLaVA-1.5 checkpoint of the W1 size (CLIP hidden 256 / MLP 1024 / 4 layers / 224 px / patch
14 -> 256 image tokens; LLaMA hidden 512 / MLP 1408 / 8 layers / 8 heads / 4 KV heads / vocab
32000; random weights, fp32) is written by the LLaVA plugin's factory. N requests, each a
different PNG image of its own size and a ~20-token question, generate 64 tokens greedily with
EOS ignored. Timed end to end from the encoded image bytes: decoding, preprocessing, vision
tower, prefill and decode.

Peers, on the same checkpoint and requests:
* HF ``generate`` batched: ``LlavaProcessor`` on all requests, left padding, one ``generate``
  under ``torch.inference_mode()``;
* HF ``generate`` one request at a time.

Reported: output tokens/s of each, vlkit's speed-up, vlkit's time to first token (p50/p95),
peak RSS, and the roofline fraction of a vlkit decode step (BENCH.md: ideal step time from the
bandwidth and matmul throughput measured in this run, over the achieved one).
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

QUESTIONS = [
    "What is shown in this picture? Describe the main objects and their colors in detail please.",
    "Describe the scene in this image, including the background, the lighting and any people.",
    "How many distinct shapes can you count in this image, and where is each one located?",
    "Is there any text visible in the image? If so, read it aloud and explain what it means.",
]


def _requests(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    from vlkit.testing.images import make_image

    out = []
    for i in range(n):
        w, h = 160 + (i * 37) % 400, 120 + (i * 53) % 380  # every request its own size
        buf = io.BytesIO()
        make_image(w, h, seed=seed + i).save(buf, format="PNG")
        out.append((QUESTIONS[i % len(QUESTIONS)], buf.getvalue()))
    return out


def write_w1_llava(directory: str | Path) -> Path:
    from vlkit.contract.registry import get_registry

    fam = get_registry().get_family("llava")
    return fam.tiny_checkpoint(Path(directory), size="w1")


def run_vlkit(path: Path, reqs: list[tuple[str, bytes]], new_tokens: int, track_kv: bool = False,
              after: Callable[[Any], dict[str, Any]] | None = None, **engine: Any) -> dict[str, Any]:
    """vlkit on W1's requests; ``track_kv`` also reports the peak KV cache in use (the block
    manager's high-water mark over the timed run); ``after(pipe)``, run on the pipeline's loop
    thread once the timed run is over, adds its own figures to the result."""
    import vlkit
    from vlkit.bench.text import _peak_rss_mb

    blocks = len(reqs) * (-(-(400 + new_tokens) // 16)) + 16
    gen = vlkit.GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    cfg = vlkit.EngineConfig(**{"num_blocks": blocks, "dtype": "float32", **engine})
    with vlkit.pipeline(str(path), engine_config=cfg) as pipe:
        pipe((QUESTIONS[0][:20], reqs[0][1]), gen_config=vlkit.GenerationConfig(max_new_tokens=2))  # warm-up
        pipe.image_encoder.clear()
        if track_kv:
            pipe._loop.call(pipe.engine.block_manager.reset_peak)
        t0 = time.perf_counter()
        first: dict[int, float] = {}
        n_out = 0
        prompt_lens: dict[int, int] = {}
        for d in pipe.stream_infer(list(reqs), gen_config=gen):
            now = time.perf_counter() - t0
            if d.finish_reason == "error":
                raise RuntimeError(d.error)
            n_out += len(d.token_ids)
            first.setdefault(d.index, now)
            prompt_lens[d.index] = d.input_token_len
        elapsed = time.perf_counter() - t0
        peak_blocks = pipe.engine.stats()["peak_used_blocks"]
        vision_calls = pipe.image_encoder.stats["forward_calls"]
        block_bytes = sum(c[:, 0].numel() * c.element_size() for c in pipe.engine.runner.kv_caches)
        block_size = pipe.engine.engine_config.block_size
        session_len = pipe.engine.session_len
        added = pipe._loop.call(lambda: after(pipe)) if after is not None else {}
    ttft = sorted(first.values())
    decode_s = (elapsed - max(ttft)) / max(1, new_tokens - 1)
    return {
        "seconds": elapsed, "output_tokens": n_out, "tok_per_s": n_out / elapsed,
        "ttft_p50_s": statistics.median(ttft), "ttft_p95_s": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
        "decode_step_s": decode_s, "peak_rss_mb": _peak_rss_mb(), "vision_forward_calls": vision_calls,
        "mean_prompt_len": statistics.mean(prompt_lens.values()),
        **({"kv_peak_used_blocks": peak_blocks, "kv_block_bytes": block_bytes,
            "kv_peak_used_mb": peak_blocks * block_bytes / 1e6,
            "kv_session_len_reservation_mb": len(reqs) * session_len / block_size * block_bytes / 1e6,
            "session_len": session_len} if track_kv else {}),
        **added,
    }


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _hf_model(path: Path, dtype: Any = None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    dev = _device()
    model = LlavaForConditionalGeneration.from_pretrained(  # straight onto the GPU where there is one
        str(path), dtype=dtype or torch.float32, attn_implementation="sdpa", device_map=dev if dev == "cuda" else None,
    ).eval()
    proc = AutoProcessor.from_pretrained(str(path))
    return model, proc


def _hf_prompt(proc: Any, question: str) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return proc.apply_chat_template(msgs, add_generation_prompt=True)


def run_hf(path: Path, reqs: list[tuple[str, bytes]], new_tokens: int, batched: bool, dtype: Any = None) -> dict[str, Any]:
    import torch
    from PIL import Image

    model, proc = _hf_model(path, dtype)
    proc.tokenizer.padding_side = "left"
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
           "pad_token_id": proc.tokenizer.pad_token_id}

    def go(batch: list[tuple[str, bytes]]) -> int:
        images = [Image.open(io.BytesIO(b)).convert("RGB") for _, b in batch]
        texts = [_hf_prompt(proc, q) for q, _ in batch]
        inputs = proc(images=images, text=texts, return_tensors="pt", padding=True).to(_device())
        out = model.generate(**inputs, **gen)
        return (out.shape[1] - inputs["input_ids"].shape[1]) * len(batch)

    with torch.inference_mode():
        go(reqs[:1] if not batched else reqs[:2])  # warm-up
        t0 = time.perf_counter()
        n_out = go(reqs) if batched else sum(go([r]) for r in reqs)
        elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "output_tokens": n_out, "tok_per_s": n_out / elapsed}


def run_w1(num_requests: int = 16, new_tokens: int = 64, skip_hf: bool = False, hf_sequential: bool = True,
           checkpoint_dir: str | None = None, precision: str = "fp32", peers: tuple[str, ...] = ("hf",),
           repeats: int = 1, openvino_python: str | None = None, openvino_cache: str | None = None) -> dict[str, Any]:
    """W1 at ``precision`` (fp32, bf16, int8, int4, int4-asym: vlkit.bench.accuracy.PRECISIONS;
    the int ones with bf16 activations), the HF peers at the matching dtype (bf16 for int*), and
    with ``"openvino"`` in ``peers`` OpenVINO GenAI and optimum-intel at the same precision
    (:mod:`vlkit.bench.openvino`); vlkit and OpenVINO alternate ``repeats`` times, best kept."""
    import torch
    import transformers

    from vlkit.bench.precision import engine_kwargs, hf_dtype
    from vlkit.bench.text import W1_LM, decode_step_cost, measure_bandwidth, measure_matmul

    engine = engine_kwargs(precision)

    reqs = _requests(num_requests)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(checkpoint_dir or os.path.join(tmp, "w1-llava"))
        if not (path / "config.json").is_file():  # in a child process: see the note in run_vlkit's caller
            import subprocess
            import sys

            subprocess.run([sys.executable, "-c", f"from vlkit.bench.vlm import write_w1_llava; write_w1_llava({str(path)!r})"],
                           check=True)
        ov_runs: dict[str, dict[str, Any]] = {}
        if "openvino" in peers:
            from vlkit.bench import openvino as ovp

            py = ovp.openvino_python(openvino_python)
            ov_model = ovp.export(py, path, openvino_cache or os.path.join(tmp, "openvino"), precision)
            ov_reqs = ovp.write_requests(reqs, os.path.join(tmp, "requests"))
        # vlkit first, with no torch work on this thread before it: a second thread running parallel
        # torch ops makes libgomp stop spinning and slows the loop thread's ops (vlkit/loop.py)
        vl = None
        for _ in range(max(1, repeats)):  # alternated rounds: vlkit, then each OpenVINO system
            r = run_vlkit(path, reqs, new_tokens, **engine)
            vl = r if vl is None or r["tok_per_s"] > vl["tok_per_s"] else vl
            if "openvino" in peers:
                for backend in ovp.BACKENDS:
                    o = ovp.run(py, ov_model, ov_reqs, new_tokens, precision, backend)
                    if backend not in ov_runs or o["tok_per_s"] > ov_runs[backend]["tok_per_s"]:
                        ov_runs[backend] = o
        bw = measure_bandwidth()
        peak = measure_matmul(1024, 1024, 1024)
        skip_hf = skip_hf or "hf" not in peers
        hf_b = None if skip_hf else run_hf(path, reqs, new_tokens, batched=True, dtype=hf_dtype(precision))
        hf_s = None if (skip_hf or not hf_sequential) else run_hf(path, reqs, new_tokens, batched=False,
                                                                   dtype=hf_dtype(precision))
    ctx = int(vl["mean_prompt_len"] + new_tokens / 2)
    _, flops = decode_step_cost(num_requests, ctx, W1_LM)
    # bytes at this precision: weights (scales included) and the KV cache (bf16 unless fp32)
    from vlkit.bench.text import kv_bytes, weight_bytes

    nbytes = weight_bytes(W1_LM, precision) + kv_bytes(W1_LM, num_requests, ctx, precision)
    ideal = max(nbytes / bw, flops / peak)
    return {
        "workload": "w1",
        "precision": precision,
        "date": time.strftime("%Y-%m-%d"),
        "num_requests": num_requests,
        "new_tokens": new_tokens,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": _device(),
                    "torch_threads": torch.get_num_threads(), "read_bandwidth_GBps": bw / 1e9,
                    "matmul_GFLOPs_1024": peak / 1e9},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "vlkit": vl,
        "hf_generate_batched": hf_b,
        "hf_generate_sequential": hf_s,
        "speedup_vs_hf_batched": vl["tok_per_s"] / hf_b["tok_per_s"] if hf_b else None,
        "speedup_vs_hf_sequential": vl["tok_per_s"] / hf_s["tok_per_s"] if hf_s else None,
        "repeats": max(1, repeats),
        **{f"openvino_{b}": o for b, o in ov_runs.items()},
        **{f"speedup_vs_openvino_{b}": vl["tok_per_s"] / o["tok_per_s"] for b, o in ov_runs.items()},
        # the bandwidth and matmul figures are the CPU's: no roofline for a GPU run
        "roofline": None if _device() == "cuda" else {
            "decode_step_ideal_s": ideal, "decode_step_achieved_s": vl["decode_step_s"],
            "fraction": ideal / vl["decode_step_s"], "bytes_per_step": nbytes, "flops_per_step": flops},
    }


def format_table(res: dict[str, Any]) -> str:
    vl = res["vlkit"]
    rows = [("workload", f"{res['workload']}: {res['num_requests']} requests x {res['new_tokens']} new tokens, "
                         f"{res.get('precision', 'fp32')}"),
            ("vlkit tok/s", f"{vl['tok_per_s']:.1f}")]
    for key, label in (("hf_generate_batched", "HF generate batched"), ("hf_generate_sequential", "HF generate one at a time")):
        if res.get(key):
            rows.append((f"{label} tok/s", f"{res[key]['tok_per_s']:.1f}"))
    for b, label in (("genai", "OpenVINO GenAI continuous batching"), ("optimum", "OpenVINO optimum-intel batched")):
        if res.get(f"openvino_{b}"):
            rows.append((f"{label} tok/s", f"{res[f'openvino_{b}']['tok_per_s']:.1f} "
                                           f"(vlkit {res[f'speedup_vs_openvino_{b}']:.2f}x)"))
    if res.get("speedup_vs_hf_batched"):
        rows.append(("speed-up vs HF batched", f"{res['speedup_vs_hf_batched']:.2f}x"))
    if res.get("speedup_vs_hf_sequential"):
        rows.append(("speed-up vs HF one at a time", f"{res['speedup_vs_hf_sequential']:.2f}x"))
    rows += [
        ("vlkit TTFT p50 / p95", f"{vl['ttft_p50_s'] * 1e3:.0f} ms / {vl['ttft_p95_s'] * 1e3:.0f} ms"),
        ("vlkit decode step", f"{vl['decode_step_s'] * 1e3:.1f} ms"),
        ("peak RSS", f"{vl['peak_rss_mb']:.0f} MB"),
    ]
    if res["roofline"]:
        rows[-1:-1] = [
            ("roofline step / fraction", f"{res['roofline']['decode_step_ideal_s'] * 1e3:.1f} ms / "
                                         f"{res['roofline']['fraction'] * 100:.0f} %"),
            ("read bandwidth / matmul", f"{res['machine']['read_bandwidth_GBps']:.1f} GB/s / "
                                        f"{res['machine']['matmul_GFLOPs_1024']:.0f} GFLOP/s"),
        ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def plot(res: dict[str, Any], path: str | Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels, values = ["vlkit"], [res["vlkit"]["tok_per_s"]]
    for key, label in (("hf_generate_batched", "HF generate\nbatched"), ("hf_generate_sequential", "HF generate\none at a time")):
        if res.get(key):
            labels.append(label)
            values.append(res[key]["tok_per_s"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(labels, values, color=["#2b6cb0", "#a0aec0", "#cbd5e0"][: len(values)])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("output tokens / s")
    where = res["machine"].get("device", "cpu").upper()
    ax.set_title(f"{res['workload']}: {res['num_requests']} requests x {res['new_tokens']} tokens "
                 f"({where}, {res.get('precision', 'fp32')})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save(res: dict[str, Any], output: str | Path) -> tuple[Path, Path | None]:
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return out, plot(res, out.with_suffix(".png"))
