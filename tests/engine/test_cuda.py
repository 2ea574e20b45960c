"""The GPU engine on CUDA: the compiled Triton kernel, real CUDA graphs, bf16 against transformers.

Skipped without a CUDA device (the CPU suite checks the same paths through Triton's interpreter
and emulated graphs: test_gpu_paths.py). ``scripts/gpu-check.sh`` runs these on a lent GPU.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import hf_greedy, paged_decode_reference, prompts

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from vlkit.kernels import paged_decode  # noqa: E402


def _run(path, reqs, **kw):
    cfg = EngineConfig(num_blocks=kw.pop("num_blocks", 64), **kw)
    out: dict[str, list] = {}
    with LLMEngine.from_pretrained(path, cfg) as eng:
        for i, (p, n) in enumerate(reqs):
            eng.add_request(f"r{i}", p, GenerationConfig(max_new_tokens=n, ignore_eos=True, logprobs=0))
            for o in eng.step():
                out.setdefault(o.request_id, []).extend(zip(o.new_token_ids, o.new_logprobs))
        while eng.has_unfinished():
            for o in eng.step():
                out.setdefault(o.request_id, []).extend(zip(o.new_token_ids, o.new_logprobs))
        g = eng.runner.graphs
        info = {"backend": eng.runner.attention_backend, "replays": sum(g.replays.values()) if g else 0,
                "dtype": eng.dtype}
    return {k: [t for t, _ in v] for k, v in out.items()}, out, info


def _reqs(n=6):
    return [(p, 12 + 3 * i) for i, p in enumerate(prompts(n, seed=51, lo=4, hi=40))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,block_size", [(32, 8, 128, 16), (14, 2, 64, 16), (8, 8, 80, 5)])
def test_compiled_kernel_matches_sdpa(dtype, heads, kv_heads, head_dim, block_size):
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(2, 300, block_size, kv_heads, head_dim, generator=g).to(dtype)
    lens = torch.tensor([1, 700, 0, 33, block_size, 1500 // block_size * block_size], dtype=torch.int32)
    lens = lens.clamp(max=300 * block_size // 2)
    width = -(-int(lens.max()) // block_size)
    tables = torch.stack([torch.randperm(300, generator=g)[:width] for _ in range(len(lens))]).to(torch.int32)
    q = torch.randn(len(lens), heads, head_dim, generator=g).to(dtype)
    ref = paged_decode_reference(q, cache, tables, lens, head_dim**-0.5)
    got = paged_decode.paged_decode_attention(q.cuda(), cache.cuda(), tables.cuda(), lens.cuda(), head_dim**-0.5)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.cpu(), ref, atol=tol, rtol=tol)


def test_fp32_cuda_graphs_equal_cpu_and_eager(llama_path):
    reqs = _reqs()
    cpu, cpu_lp, _ = _run(llama_path, reqs, device="cpu")
    graphs, graphs_lp, info = _run(llama_path, reqs, device="cuda", dtype="float32")
    eager, _, einfo = _run(llama_path, reqs, device="cuda", dtype="float32", enforce_eager=True)
    assert info["backend"] == "triton" and info["replays"] > 0 and einfo["replays"] == 0
    assert graphs == cpu == eager
    for rid in cpu_lp:
        for (_, a), (_, b) in zip(graphs_lp[rid], cpu_lp[rid]):
            torch.testing.assert_close(list(a.values()), list(b.values()), atol=1e-3, rtol=1e-3)


def test_bf16_cuda_matches_transformers_bf16(llama_path):
    """bf16 tolerance: run transformers in bf16 on CUDA over each prompt plus vlkit's greedy
    tokens (teacher forcing); every vlkit token is transformers' arg-max at its position, up to
    the first position where transformers' own top-2 logits are within 1 % (a tie in bf16)."""
    from transformers import AutoModelForCausalLM

    reqs = _reqs(4)
    got, _, info = _run(llama_path, reqs, device="cuda")  # dtype auto: bf16
    assert info["dtype"] == torch.bfloat16 and info["replays"] > 0
    hf = AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.bfloat16).cuda().eval()
    checked = 0
    for i, (p, n) in enumerate(reqs):
        with torch.inference_mode():
            logits = hf(torch.tensor([p + got[f"r{i}"]], device="cuda")).logits[0, len(p) - 1: -1].float()
        top = logits.topk(2, dim=-1).values
        near_tie = ((top[:, 0] - top[:, 1]).abs() < 0.01 * top[:, 0].abs()).nonzero()
        upto = int(near_tie[0]) if len(near_tie) else n
        assert got[f"r{i}"][:upto] == logits.argmax(-1)[:upto].tolist()
        checked += upto
    assert checked >= sum(n for _, n in reqs) // 2  # the check is not vacuous


def test_hf_parity_greedy_cuda_fp32(llama_path):
    from transformers import AutoModelForCausalLM

    reqs = _reqs(3)
    got, _, _ = _run(llama_path, reqs, device="cuda", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.float32).eval()
    for i, (p, n) in enumerate(reqs):
        assert got[f"r{i}"] == hf_greedy(hf, p, n)
