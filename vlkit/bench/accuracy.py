"""Accuracy gates of the CPU precisions against fp32 (``vlkit bench accuracy``).

For each precision (bf16, int8, int4, int4-asym; see :data:`PRECISIONS`) on the same checkpoint
and prompts as an fp32 engine:

- **greedy agreement**: the fraction of the first ``new_tokens`` greedy tokens equal to fp32's,
  position by position, free running (a fork early makes the rest of a sequence differ);
- **top-1 agreement** (teacher-forced): on fp32's greedy sequence, the fraction of positions
  where this precision's arg-max is fp32's next token;
- **mean KL**: ``KL(p_fp32 || p_precision)`` of the next-token distributions at those positions,
  in nats, averaged;
- **max logit error**: the largest ``|logit - logit_fp32|`` there.

Models: ``tiny`` (the 2-layer random LLaMA of the engine parity tests: hidden 64, vocab 512) and
``w1-lm`` (W1's language model: hidden 512, 8 layers, vocab 32000; random weights).
Random-weight models have near-flat next-token distributions, so their arg-max forks easily:
these gates compare precisions with each other, they do not predict a trained model's quality.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from typing import Any

from vlkit.bench.precision import engine_kwargs

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, initializer_range=0.08,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def _write(model: str, path: str, seed: int = 0) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlkit.bench.text import W1_LM

    cfg = {"tiny": TINY_LLAMA, "w1-lm": W1_LM}[model]
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**cfg)).eval().save_pretrained(path)
    return path


def _prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 40, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lens]


def _run(path: str, precision: str, prompts: list[list[int]], new_tokens: int,
         ref_tokens: list[list[int]] | None) -> tuple[list[list[int]], list[Any]]:
    from vlkit.config import EngineConfig, GenerationConfig
    from vlkit.engine.engine import LLMEngine
    from vlkit.engine.loader import text_model_spec

    blocks = sum(-(-(len(p) + new_tokens) // 16) for p in prompts) + 8
    cfg = EngineConfig(device="cpu", num_blocks=blocks, **engine_kwargs(precision))
    with LLMEngine(text_model_spec(path), cfg) as eng:
        toks = [o.token_ids for o in eng.generate(prompts, GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True))]
        scored = ref_tokens or toks
        logits = [eng.get_logits(p + t)[len(p) - 1 : len(p) - 1 + len(t)] for p, t in zip(prompts, scored)]
    return toks, logits


def measure(path: str, precisions: list[str], num_prompts: int = 8, new_tokens: int = 16,
            seed: int = 0) -> dict[str, Any]:
    """The gates of each precision against fp32 on the checkpoint at ``path``."""
    import torch

    from vlkit.engine.loader import read_config

    vocab = int(read_config(path)["vocab_size"])
    prompts = _prompts(num_prompts, vocab, seed)
    ref_toks, ref_logits = _run(path, "fp32", prompts, new_tokens, None)
    out: dict[str, Any] = {}
    for prec in precisions:
        if prec == "fp32":
            continue
        toks, logits = _run(path, prec, prompts, new_tokens, ref_toks)
        greedy = sum(a == b for x, y in zip(toks, ref_toks) for a, b in zip(x, y)) / sum(map(len, ref_toks))
        top1, kl, err, n = 0.0, 0.0, 0.0, 0
        for lg, rl, t in zip(logits, ref_logits, ref_toks):
            top1 += float((lg.argmax(-1) == torch.tensor(t)).sum())
            lp, lq = torch.log_softmax(rl, -1), torch.log_softmax(lg, -1)
            kl += float((lp.exp() * (lp - lq)).sum())
            err = max(err, float((lg - rl).abs().max()))
            n += len(t)
        out[prec] = {"greedy_agreement": greedy, "top1_agreement": top1 / n, "mean_kl": kl / n,
                     "max_logit_error": err, "ref_logit_std": float(torch.cat(ref_logits).std())}
    return out


def run_accuracy(models: tuple[str, ...] = ("tiny", "w1-lm"), precisions: tuple[str, ...] = ("bf16", "int8", "int4",
                 "int4-asym"), num_prompts: int = 8, new_tokens: int = 16) -> dict[str, Any]:
    import torch
    import transformers

    res: dict[str, Any] = {
        "workload": "accuracy", "date": time.strftime("%Y-%m-%d"), "num_prompts": num_prompts,
        "new_tokens": new_tokens,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "processor": platform.processor()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__}, "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            path = _write(model, os.path.join(tmp, model))
            res["models"][model] = measure(path, list(precisions), num_prompts, new_tokens)
    return res


def format_table(res: dict[str, Any]) -> str:
    rows = [f"{'model':<7} {'precision':<10} {'greedy agree':>12} {'top-1 agree':>11} {'mean KL':>9} {'max |dlogit|':>12}"]
    for model, by_prec in res["models"].items():
        for prec, r in by_prec.items():
            rows.append(f"{model:<7} {prec:<10} {r['greedy_agreement']:>12.3f} {r['top1_agreement']:>11.3f} "
                        f"{r['mean_kl']:>9.5f} {r['max_logit_error']:>12.4f}")
    return "\n".join(rows)
