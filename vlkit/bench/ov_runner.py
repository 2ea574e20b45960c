#!/usr/bin/env python
"""The OpenVINO peer of ``vlkit bench``: runs in the OpenVINO venv, imports nothing of vlkit.

:mod:`vlkit.bench.openvino` exports the checkpoint with optimum-intel and runs this file with
that venv's Python (OpenVINO's optimum-intel pins a transformers older than vlkit's)::

python ov_runner.py --model DIR --requests REQS.json --new-tokens 64 \
    --precision fp32|bf16|int8|int4 --backend genai|optimum

REQS.json: [{"question": str, "image": "path.png"}, ...]

Times one end-to-end run of all requests (PNG decode -> preprocessing -> vision
encoder -> prefill -> N greedy decode steps, EOS ignored) after one untimed
warm-up run, and prints ONE JSON line on stdout.

backend genai:   openvino_genai.ContinuousBatchingPipeline (VLM mode; VLMPipeline.generate
                 only takes a single prompt). All requests are submitted with add_request()
                 and driven with step() until done, so they are scheduled concurrently.
backend optimum: optimum.intel.OVModelForVisualCausalLM + transformers processor,
                 one batched generate() over all requests (or --batch-size chunks).
"""
import argparse
import json
import os
import sys
import time
from importlib import metadata


def versions():
    out = {}
    for p in ("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "optimum",
              "transformers", "torch", "nncf"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def ov_properties(precision, override=None):
    # fp32 runs must force f32 compute: the CPU plugin defaults to bf16 where the CPU has
    # avx512_bf16/AMX. Weight-compressed (int8/int4) and fp16-weight ("bf16") IRs run with
    # bf16 activations, the plugin's default on such CPUs; stated explicitly here.
    hint = override or ("f32" if precision == "fp32" else "bf16")
    return {"INFERENCE_PRECISION_HINT": hint}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def timed(one_run):
    """One untimed warm-up run, then one timed: (token counts, seconds)."""
    t = time.perf_counter()
    one_run()
    log(f"warm-up {time.perf_counter() - t:.2f}s")
    t = time.perf_counter()
    counts = one_run()
    return counts, time.perf_counter() - t


# ----------------------------------------------------------------------------- genai
def run_genai(args, reqs):
    import numpy as np
    import openvino as ov
    import openvino_genai as ov_genai
    from PIL import Image

    props = ov_properties(args.precision, args.inference_precision)
    # CPU plugin default KV cache precision is u8 (compressed); pin it to the run's precision.
    props["KV_CACHE_PRECISION"] = args.kv_cache_precision or ("f32" if args.precision == "fp32" else "bf16")
    sc = ov_genai.SchedulerConfig()
    sc.cache_size = args.cache_size_gb           # KV cache pool, GB
    sc.max_num_batched_tokens = args.max_num_batched_tokens
    sc.max_num_seqs = max(len(reqs), 1)
    sc.dynamic_split_fuse = True
    sc.enable_prefix_caching = False             # warm-up must not pre-fill the timed run
    vprops = ov_properties(args.precision, args.inference_precision)
    pipe = ov_genai.ContinuousBatchingPipeline(args.model, sc, "CPU", props, {}, vprops)

    cfg = ov_genai.GenerationConfig()
    cfg.max_new_tokens = args.new_tokens
    cfg.min_new_tokens = args.new_tokens
    cfg.ignore_eos = True
    cfg.do_sample = False                        # greedy
    cfg.num_beams = 1
    cfg.apply_chat_template = True               # "USER: <image>\n{q} ASSISTANT:"

    state = {"rid": 0}

    def one_run():
        handles = []
        for r in reqs:
            with open(r["image"], "rb") as f:
                img = Image.open(f).convert("RGB")
                arr = np.array(img, dtype=np.uint8)[None]          # [1, H, W, 3]
            # explicit "<image>\n" tag: without it genai prepends "<image>" without the
            # newline (1 prompt token fewer than the HF chat template gives).
            prompt = "<image>\n" + r["question"]
            handles.append(pipe.add_request(state["rid"], prompt, [ov.Tensor(arr)], cfg))
            state["rid"] += 1
        while pipe.has_non_finished_requests():
            pipe.step()
        counts = []
        for h in handles:
            outs = h.read_all()
            assert len(outs) == 1, len(outs)
            counts.append(len(outs[0].generated_ids))
        return counts

    counts, secs = timed(one_run)
    extra = {"scheduler": {"cache_size_gb": sc.cache_size,
                           "max_num_batched_tokens": sc.max_num_batched_tokens,
                           "max_num_seqs": sc.max_num_seqs, "dynamic_split_fuse": True,
                           "prefix_caching": False},
             "ov_properties": props}
    return counts, secs, extra


# ----------------------------------------------------------------------------- optimum
def run_optimum(args, reqs):
    import torch
    from optimum.intel import OVModelForVisualCausalLM
    from PIL import Image
    from transformers import AutoProcessor

    props = ov_properties(args.precision, args.inference_precision)
    props["KV_CACHE_PRECISION"] = args.kv_cache_precision or ("f32" if args.precision == "fp32" else "bf16")
    model = OVModelForVisualCausalLM.from_pretrained(args.model, device="CPU", ov_config=props)
    proc = AutoProcessor.from_pretrained(args.model)
    proc.tokenizer.padding_side = "left"
    bs = args.batch_size or len(reqs)

    def prompt(q):
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
        return proc.apply_chat_template(conv, add_generation_prompt=True)

    prompts = [prompt(r["question"]) for r in reqs]

    def one_run():
        counts = []
        for s in range(0, len(reqs), bs):
            chunk = reqs[s:s + bs]
            imgs = []
            for r in chunk:
                with open(r["image"], "rb") as f:
                    imgs.append(Image.open(f).convert("RGB"))
            inputs = proc(images=imgs, text=prompts[s:s + bs], padding=True, return_tensors="pt")
            n_in = inputs["input_ids"].shape[1]
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=args.new_tokens,
                                     min_new_tokens=args.new_tokens, do_sample=False,
                                     num_beams=1)
            gen = out[:, n_in:]
            counts.extend([int(gen.shape[1])] * gen.shape[0])
        return counts

    counts, secs = timed(one_run)
    return counts, secs, {"batch_size": bs, "ov_properties": props}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--precision", required=True, choices=["fp32", "bf16", "int8", "int4"])
    ap.add_argument("--backend", default="genai", choices=["genai", "optimum"])
    ap.add_argument("--inference-precision", default=None, help="override INFERENCE_PRECISION_HINT")
    ap.add_argument("--kv-cache-precision", default=None, help="override KV_CACHE_PRECISION")
    ap.add_argument("--cache-size-gb", type=int, default=2, help="genai KV cache pool")
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048, help="genai scheduler")
    ap.add_argument("--batch-size", type=int, default=0, help="optimum: 0 = all requests in one batch")
    args = ap.parse_args()

    with open(args.requests) as f:
        reqs = json.load(f)
    run = run_genai if args.backend == "genai" else run_optimum
    counts, secs, extra = run(args, reqs)
    total = sum(counts)
    expected = len(reqs) * args.new_tokens
    if total != expected or any(c != args.new_tokens for c in counts):
        log(f"ERROR: generated {counts} (total {total}) != {len(reqs)} x {args.new_tokens}")
        sys.exit(2)
    print(json.dumps({
        "system": f"openvino-{args.backend}",
        "precision": args.precision,
        "requests": len(reqs),
        "new_tokens": args.new_tokens,
        "output_tokens": total,
        "seconds": round(secs, 4),
        "tok_s": round(total / secs, 2),
        "threads": os.cpu_count(),
        "config": extra,
        "versions": versions(),
    }), flush=True)


if __name__ == "__main__":
    main()
