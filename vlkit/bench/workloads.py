"""Workloads W2-W4 of shared/BENCH.md, on the W1 LLaVA checkpoint (``llava-60m``, random weights).

* **W2 multi-turn**: 8 chat sessions x 4 turns, each session about its own image, all sessions
  of a turn submitted together (the history carries a fixed ~30-token reply per turn, see
  ``REPLIES``). Time to first token of turns 2-4 against turn 1, with the
  prefix cache and the image-feature cache on, and with both off. Target: turn 2+ TTFT
  <= 0.3 x turn 1.
* **W3 vision encoder**: images/s through decoding, preprocessing and the VisionModel with
  ``VisionConfig.max_batch_size`` 1 against 16 (feature cache off). Target: batched >= 2x.
* **W4 scaling**: W1 with 1, 4, 16 and 64 concurrent requests: output tokens/s and the peak KV
  cache in use, against what ``session_len`` x requests would reserve. Target: tokens/s rises
  up to 64 requests; memory follows the tokens in flight.

Each ``run_*`` returns a JSON-ready dict; :func:`format_table` prints any of them and
:func:`plot` draws W4. ``vlkit bench w2|w3|w4`` is the command line.
"""

from __future__ import annotations

import base64
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlkit.bench.vlm import QUESTIONS, _device, _requests, run_vlkit

# What the assistant "said" in the history of later turns. A random-weight model generates random
# token ids whose text re-tokenizes to about ten times as many tokens, which would make every turn
# ~350 tokens longer than a real chat's; a fixed reply of ~30 tokens keeps the history realistic.
REPLIES = [
    "The picture shows a few colored shapes on a plain background: a red circle on the left, "
    "a blue square in the middle and a green stripe along the bottom edge.",
    "Mostly red and blue, with a thin green band; the background is a flat light gray.",
    "Nothing appears to move: the shapes have sharp edges and there is no motion blur anywhere.",
]

FOLLOW_UPS = [
    "What colors stand out the most?",
    "Is anything in the picture moving, or is it all still?",
    "Summarize the image in one short sentence.",
]


@contextmanager
def w1_checkpoint(checkpoint_dir: str | None = None) -> Iterator[Path]:
    """The W1 LLaVA checkpoint, written in a child process (see ``vlkit/loop.py`` on threads)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(checkpoint_dir or os.path.join(tmp, "w1-llava"))
        if not (path / "config.json").is_file():
            subprocess.run([sys.executable, "-c", f"from vlkit.bench.vlm import write_w1_llava; write_w1_llava({str(path)!r})"],
                           check=True)
        yield path


def _machine() -> dict[str, Any]:
    import torch
    import transformers

    return {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": _device(),
                        "torch_threads": torch.get_num_threads()},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- W2 ----------------------------------------------------------------------------------------
def _w2_pass(path: Path, sessions: int, turns: int, new_tokens: int, caches: bool) -> dict[str, Any]:
    import vlkit

    reqs = _requests(sessions, seed=100)
    engine = vlkit.EngineConfig(dtype="float32", enable_prefix_caching=caches,
                                num_blocks=sessions * (-(-(400 + turns * (new_tokens + 40)) // 16)) + 16)
    vision = vlkit.VisionConfig(feature_cache_size=256 if caches else 0)
    gen = vlkit.GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
    histories: list[list[dict[str, Any]]] = [[] for _ in range(sessions)]
    per_turn: list[dict[str, Any]] = []
    with vlkit.pipeline(str(path), engine_config=engine, vision_config=vision) as pipe:
        warm = _requests(1, seed=999)[0]
        pipe((QUESTIONS[0][:20], warm[1]), gen_config=vlkit.GenerationConfig(max_new_tokens=2))
        for turn in range(turns):
            for s, (question, png) in enumerate(reqs):
                if turn == 0:
                    content: Any = [{"type": "image_url", "image_url": {"url": _data_uri(png)}},
                                    {"type": "text", "text": question}]
                else:
                    content = FOLLOW_UPS[(turn - 1) % len(FOLLOW_UPS)]
                histories[s].append({"role": "user", "content": content})
            before = pipe.engine.stats()
            hits_before = pipe.image_encoder.stats["cache_hits"]
            first: dict[int, float] = {}
            prompt_lens: dict[int, int] = {}
            t0 = time.perf_counter()
            for d in pipe.stream_infer([list(h) for h in histories], gen_config=gen):
                if d.finish_reason == "error":
                    raise RuntimeError(d.error)
                first.setdefault(d.index, time.perf_counter() - t0)
                prompt_lens[d.index] = d.input_token_len
            after = pipe.engine.stats()
            for s in range(sessions):
                histories[s].append({"role": "assistant", "content": REPLIES[turn % len(REPLIES)]})
            ttft = sorted(first.values())
            per_turn.append({
                "turn": turn + 1,
                "ttft_p50_s": statistics.median(ttft),
                "ttft_max_s": ttft[-1],
                "mean_prompt_tokens": statistics.mean(prompt_lens.values()),
                "prefix_hit_tokens": after["prefix_hit_tokens"] - before["prefix_hit_tokens"],
                "image_feature_cache_hits": pipe.image_encoder.stats["cache_hits"] - hits_before,
            })
    first_turn = per_turn[0]["ttft_p50_s"]
    later = [t["ttft_p50_s"] for t in per_turn[1:]]
    return {"caches": caches, "turns": per_turn,
            "later_over_first": (statistics.mean(later) / first_turn) if later else None}


def run_w2(sessions: int = 8, turns: int = 4, new_tokens: int = 32, checkpoint_dir: str | None = None) -> dict[str, Any]:
    with w1_checkpoint(checkpoint_dir) as path:
        on = _w2_pass(path, sessions, turns, new_tokens, caches=True)
        off = _w2_pass(path, sessions, turns, new_tokens, caches=False)
    return {"workload": "w2", "sessions": sessions, "turns": turns, "new_tokens": new_tokens, **_machine(),
            "caches_on": on, "caches_off": off, "target_later_over_first": 0.3}


# -- W3 ----------------------------------------------------------------------------------------
def run_w3(num_images: int = 32, batch_sizes: tuple[int, ...] = (1, 16), repeats: int = 3,
           checkpoint_dir: str | None = None) -> dict[str, Any]:
    import vlkit
    from vlkit.contract.messages import ImageRef

    pngs = [png for _, png in _requests(num_images, seed=200)]
    results = []
    with w1_checkpoint(checkpoint_dir) as path:
        vision = vlkit.VisionConfig(feature_cache_size=0)
        with vlkit.pipeline(str(path), engine_config=vlkit.EngineConfig(dtype="float32"), vision_config=vision) as pipe:
            enc = pipe.image_encoder

            def encode_all() -> int:
                return len(enc.encode(enc.preprocess([ImageRef(p) for p in pngs])))

            for bs in batch_sizes:
                enc.config.max_batch_size = bs
                pipe._loop.call(encode_all)  # warm-up at this batch size
                best = float("inf")
                for _ in range(repeats):
                    calls = enc.stats["forward_calls"]
                    t0 = time.perf_counter()
                    pipe._loop.call(encode_all)
                    best = min(best, time.perf_counter() - t0)
                    forwards = enc.stats["forward_calls"] - calls
                results.append({"max_batch_size": bs, "seconds": best, "images_per_s": num_images / best,
                                "forward_calls": forwards})
    base = results[0]["images_per_s"]
    for r in results:
        r["vs_first"] = r["images_per_s"] / base
    return {"workload": "w3", "num_images": num_images, "repeats": repeats, **_machine(), "results": results,
            "target_batched_over_unbatched": 2.0}


# -- W4 ----------------------------------------------------------------------------------------
def run_w4(loads: tuple[int, ...] = (1, 4, 16, 64), new_tokens: int = 64,
           checkpoint_dir: str | None = None) -> dict[str, Any]:
    results = []
    with w1_checkpoint(checkpoint_dir) as path:
        for n in loads:
            vl = run_vlkit(path, _requests(n), new_tokens, track_kv=True)
            results.append({"requests": n, **vl})
    return {"workload": "w4", "new_tokens": new_tokens, **_machine(), "results": results}


# -- output ------------------------------------------------------------------------------------
def format_table(res: dict[str, Any]) -> str:
    w = res["workload"]
    if w == "w2":
        lines = [f"w2: {res['sessions']} sessions x {res['turns']} turns, {res['new_tokens']} new tokens a turn",
                 f"{'turn':<6}{'TTFT p50, caches on':>22}{'prefix hits':>13}{'image hits':>12}"
                 f"{'TTFT p50, caches off':>23}"]
        for a, b in zip(res["caches_on"]["turns"], res["caches_off"]["turns"]):
            lines.append(f"{a['turn']:<6}{a['ttft_p50_s'] * 1e3:>19.0f} ms{a['prefix_hit_tokens']:>13}"
                         f"{a['image_feature_cache_hits']:>12}{b['ttft_p50_s'] * 1e3:>20.0f} ms")
        lines.append(f"turns 2+ / turn 1 (TTFT p50): caches on {res['caches_on']['later_over_first']:.2f}, "
                     f"caches off {res['caches_off']['later_over_first']:.2f} (target <= 0.3 with caches)")
        return "\n".join(lines)
    if w == "w3":
        lines = [f"w3: {res['num_images']} images (decode + preprocess + vision tower), best of {res['repeats']}",
                 f"{'max_batch_size':<16}{'images/s':>10}{'forwards':>10}{'vs first':>10}"]
        for r in res["results"]:
            lines.append(f"{r['max_batch_size']:<16}{r['images_per_s']:>10.1f}{r['forward_calls']:>10}"
                         f"{r['vs_first']:>9.2f}x")
        return "\n".join(lines)
    if w == "w4":
        lines = [f"w4: W1 at increasing load, {res['new_tokens']} new tokens a request",
                 f"{'requests':<10}{'tok/s':>9}{'TTFT p50':>11}{'peak KV used':>14}{'session_len x req':>19}"]
        for r in res["results"]:
            lines.append(f"{r['requests']:<10}{r['tok_per_s']:>9.1f}{r['ttft_p50_s'] * 1e3:>8.0f} ms"
                         f"{r['kv_peak_used_mb']:>11.1f} MB{r['kv_session_len_reservation_mb']:>16.1f} MB")
        return "\n".join(lines)
    raise ValueError(f"unknown workload record {w!r}")


def plot(res: dict[str, Any], path: str | Path) -> Path | None:
    """W4: tokens/s and peak KV memory against the number of requests (None without matplotlib)."""
    if res["workload"] != "w4":
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    n = [r["requests"] for r in res["results"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(n, [r["tok_per_s"] for r in res["results"]], "o-", color="#2b6cb0", label="output tok/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("output tokens / s")
    ax2 = ax.twinx()
    ax2.plot(n, [r["kv_peak_used_mb"] for r in res["results"]], "s--", color="#c05621", label="peak KV used (MB)")
    ax2.set_ylabel("peak KV cache used, MB")
    ax.set_title(f"w4: W1 at 1-{max(n)} requests ({res['machine']['device'].upper()}, fp32)")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
