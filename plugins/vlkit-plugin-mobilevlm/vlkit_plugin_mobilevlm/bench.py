"""``vlkit bench mobilevlm``: a MobileVLM-architecture checkpoint of the W1 size, vlkit vs HF-style eager.

The checkpoint (written by :func:`vlkit_plugin_mobilevlm.checkpoints.tiny_mobilevlm` with
``size="w1"``, ``version="v1"``, random weights, fp32, ``pytorch_model.bin``): CLIP hidden 256 /
MLP 1024 / 4 layers / 4 heads / 224 px / patch 14 (16x16 grid), ``ldpnet`` (-> 8x8 = 64 image
tokens), LLaMA hidden 512 / MLP 1408 / 8 layers / 8 heads / 4 KV heads / vocab 32000.

N requests, each a different PNG of its own size and a ~20-token question, 64 new tokens each,
greedy, EOS ignored, timed end to end from the encoded image bytes. Peers in the same run:

* vlkit: ``vlkit.pipeline(...).stream_infer`` (the core's W1 runner, :func:`vlkit.bench.vlm.run_vlkit`);
* HF-style eager (:class:`vlkit_plugin_mobilevlm.testing.EagerMobileVLM`): transformers'
  ``CLIPVisionModel`` + the projector on all images at once, the original prompt, then one
  ``LlamaForCausalLM.generate(inputs_embeds=...)`` on the whole batch, left padded, under
  ``torch.inference_mode()``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from vlkit.bench.vlm import QUESTIONS


def make_requests(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    from vlkit.testing.images import make_image

    out = []
    for i in range(n):
        w, h = 160 + (i * 37) % 400, 120 + (i * 53) % 380  # every request its own size
        buf = io.BytesIO()
        make_image(w, h, seed=seed + i).save(buf, format="PNG")
        out.append((QUESTIONS[i % len(QUESTIONS)], buf.getvalue()))
    return out


def write_checkpoint(directory: str | Path) -> Path:
    from vlkit_plugin_mobilevlm.checkpoints import tiny_mobilevlm

    return tiny_mobilevlm(directory, version="v1", size="w1", fmt="bin")


def run_hf(path: Path, reqs: list[tuple[str, bytes]], new_tokens: int) -> dict[str, Any]:
    import torch
    from PIL import Image

    from vlkit_plugin_mobilevlm.testing import EagerMobileVLM

    ref = EagerMobileVLM(path)

    def go(batch: list[tuple[str, bytes]]) -> int:
        decoded = [(q, Image.open(io.BytesIO(b)).convert("RGB")) for q, b in batch]
        out = ref.generate_batch(decoded, new_tokens)
        return out.shape[1] * len(batch)

    with torch.inference_mode():
        go(reqs[:2])  # warm-up
        t0 = time.perf_counter()
        n_out = go(reqs)
        elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "output_tokens": n_out, "tok_per_s": n_out / elapsed}


def run(num_requests: int = 16, new_tokens: int = 64, skip_hf: bool = False,
        checkpoint_dir: str | None = None) -> dict[str, Any]:
    import torch
    import transformers

    from vlkit.bench.vlm import run_vlkit

    reqs = make_requests(num_requests)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(checkpoint_dir or os.path.join(tmp, "w1-mobilevlm"))
        if not (path / "config.json").is_file():
            write_checkpoint(path)
        vl = run_vlkit(path, reqs, new_tokens)
        hf = None if skip_hf else run_hf(path, reqs, new_tokens)
    return {
        "workload": "mobilevlm",
        "checkpoint": "MobileLlamaForCausalLM, W1 size, ldpnet (64 image tokens), random fp32 weights, pytorch_model.bin",
        "num_requests": num_requests,
        "new_tokens": new_tokens,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "vlkit": vl,
        "hf_eager_batched": hf,
        "speedup_vs_hf_batched": vl["tok_per_s"] / hf["tok_per_s"] if hf else None,
    }


def format_table(res: dict[str, Any]) -> str:
    vl, hf = res["vlkit"], res["hf_eager_batched"]
    rows = [
        ("requests x new tokens", f"{res['num_requests']} x {res['new_tokens']}"),
        ("vlkit tok/s", f"{vl['tok_per_s']:.1f}"),
        ("HF eager batched tok/s", f"{hf['tok_per_s']:.1f}" if hf else "skipped"),
        ("ratio vlkit / HF", f"{res['speedup_vs_hf_batched']:.2f}x" if hf else "-"),
        ("vlkit TTFT p50 / p95 (s)", f"{vl['ttft_p50_s']:.3f} / {vl['ttft_p95_s']:.3f}"),
        ("vlkit peak RSS (MB)", f"{vl['peak_rss_mb']:.0f}"),
    ]
    w = max(len(k) for k, _ in rows)
    lines = ["MobileVLM (W1 size, ldpnet) — vlkit vs HF-style eager generate", "-" * (w + 16)]
    lines += [f"{k:<{w}}  {v}" for k, v in rows]
    return "\n".join(lines)


def run_cli(args: argparse.Namespace) -> int:
    res = run(int(args.requests), int(args.new_tokens), skip_hf=bool(getattr(args, "skip_hf", False)))
    print(format_table(res))
    output = Path(args.output) if getattr(args, "output", None) else Path(
        f"bench-mobilevlm-{time.strftime('%Y%m%d-%H%M%S')}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(res, indent=2))
    print(f"wrote {output}")
    return 0
