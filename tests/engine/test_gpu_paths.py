"""The GPU engine's code paths, checked on the CPU: the Triton paged-decode kernel (in Triton's
interpreter) against SDPA and transformers, and decode CUDA graphs through their CPU stand-in
(same static buffers, padding and bucket choice; ``vlkit.engine.cuda_graph.EmulatedGraph``).

On a GPU machine ``scripts/gpu-check.sh`` runs the same engine checks on CUDA with real graphs.
"""

from __future__ import annotations

import os

import pytest
import torch
from engine_helpers import hf_greedy, paged_decode_reference, prompts, write_hf_checkpoint

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine
from vlkit.engine.cuda_graph import batch_sizes
from vlkit.kernels import paged_decode
from vlkit.layers.attention import resolve_backend

if not paged_decode.available():
    if os.environ.get("VLKIT_REQUIRE_TRITON") == "1":  # CI: these checks must run
        raise RuntimeError("VLKIT_REQUIRE_TRITON=1 but triton is not importable")
    pytest.skip("triton is not installed", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") != "1":  # a CUDA machine: test_cuda.py checks the compiled kernel
    pytest.skip("these CPU checks run Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py "
                "where there is no CUDA)", allow_module_level=True)


@pytest.mark.parametrize(
    "heads,kv_heads,head_dim,block_size,dtype",
    [
        (4, 2, 16, 16, torch.float32),  # GQA 2
        (6, 2, 24, 5, torch.float32),  # group 3 (not a power of two), head_dim 24, block_size 5
        (7, 1, 8, 7, torch.float32),  # MQA, group 7
        (8, 8, 32, 16, torch.float32),  # MHA
        (4, 2, 16, 16, torch.bfloat16),
    ],
)
def test_kernel_matches_sdpa(heads, kv_heads, head_dim, block_size, dtype):
    g = torch.Generator().manual_seed(heads * 100 + head_dim)
    num_blocks, b = 40, 5
    cache = torch.randn(2, num_blocks, block_size, kv_heads, head_dim, generator=g).to(dtype)
    lens = torch.tensor([1, 37, 0, block_size, 3 * block_size + 1], dtype=torch.int32)
    width = -(-int(lens.max()) // block_size)
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:width] for _ in range(b)])
    q = torch.randn(b, heads, head_dim, generator=g).to(dtype)
    scale = head_dim**-0.5
    ref = paged_decode_reference(q, cache, tables, lens, scale)
    for table in (tables, tables.to(torch.int32)):
        got = paged_decode.paged_decode_attention(q, cache, table, lens, scale)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
        assert torch.all(got[2] == 0)  # an empty context (a padded graph row) is zeros, not NaN
    # a strided output (the first rows of a flat batch) is written in place
    flat = torch.full((b + 3, heads, head_dim), 7.0, dtype=dtype)
    paged_decode.paged_decode_attention(q, cache, tables, lens, scale, out=flat[:b])
    torch.testing.assert_close(flat[:b], ref, atol=2e-2, rtol=2e-2)
    assert torch.all(flat[b:] == 7.0)


def test_kernel_rejects_bad_shapes():
    cache = torch.zeros(2, 4, 16, 3, 16)
    with pytest.raises(ValueError, match="not a multiple of 3 KV heads"):
        paged_decode.paged_decode_attention(torch.zeros(1, 4, 16), cache, torch.zeros(1, 1, dtype=torch.int64),
                                            torch.ones(1, dtype=torch.int32), 1.0)


def test_resolve_backend(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, 16) == "sdpa"
    assert resolve_backend("triton", cpu, 16) == "triton"
    with pytest.raises(ValueError, match="flash_attn installed, a CUDA device"):
        resolve_backend("flash-attn", cpu, 256)
    with pytest.raises(ValueError, match="must be one of"):
        EngineConfig(attention_backend="paged")
    monkeypatch.setattr(paged_decode, "available", lambda: False)
    with pytest.raises(ValueError, match="needs triton installed"):
        resolve_backend("triton", cpu, 16)


def test_batch_sizes():
    assert batch_sizes(1) == [1]
    assert batch_sizes(6) == [1, 2, 4, 6]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(30) == [1, 2, 4, 8, 16, 24, 30]
    assert batch_sizes(256)[-3:] == [240, 248, 256]


def _run(path, requests, **kw):
    """Staggered arrivals and different lengths: the batch grows, then shrinks row by row."""
    cfg = EngineConfig(device="cpu", num_blocks=kw.pop("num_blocks", 64), **kw)
    out: dict[str, list] = {}
    with LLMEngine.from_pretrained(path, cfg) as eng:
        for i, (p, n, extra) in enumerate(requests):
            eng.add_request(f"r{i}", p, GenerationConfig(max_new_tokens=n, ignore_eos=True, logprobs=0), **extra)
            for o in eng.step():
                out.setdefault(o.request_id, []).extend(zip(o.new_token_ids, o.new_logprobs))
        while eng.has_unfinished():
            for o in eng.step():
                out.setdefault(o.request_id, []).extend(zip(o.new_token_ids, o.new_logprobs))
        info = {"graphs": eng.runner.graphs, "cache_blocks": eng.runner.kv_caches[0].shape[1],
                "preemptions": eng.stats()["num_preemptions"]}
    return out, info


def _assert_same(got, ref, tol=1e-4):
    assert got.keys() == ref.keys()
    for rid in ref:
        assert [t for t, _ in got[rid]] == [t for t, _ in ref[rid]], rid
        for (_, a), (_, b) in zip(got[rid], ref[rid]):
            torch.testing.assert_close(list(a.values()), list(b.values()), atol=tol, rtol=tol)


def _requests(n=5, seed=41):
    return [(p, 10 + 4 * i, {}) for i, p in enumerate(prompts(n, seed=seed, lo=4, hi=30))]


def test_triton_backend_matches_transformers_and_sdpa(llama_path):
    from transformers import AutoModelForCausalLM

    reqs = _requests()
    ref, _ = _run(llama_path, reqs, attention_backend="sdpa")
    got, info = _run(llama_path, reqs, attention_backend="triton")
    assert info["graphs"] is None  # eager: graphs are a CUDA feature (emulated only when asked)
    _assert_same(got, ref)
    hf = AutoModelForCausalLM.from_pretrained(llama_path, dtype=torch.float32).eval()
    for i in (0, 3):
        p, n, _ = reqs[i]
        assert [t for t, _ in got[f"r{i}"]] == hf_greedy(hf, p, n)


@pytest.fixture()
def graphs_on(monkeypatch):
    monkeypatch.setenv("VLKIT_EMULATE_CUDA_GRAPHS", "1")


def test_decode_graphs_replay_padded_batches(llama_path, graphs_on):
    reqs = _requests()
    ref, _ = _run(llama_path, reqs, attention_backend="sdpa")
    got, info = _run(llama_path, reqs, attention_backend="triton", cuda_graph_max_batch=8)
    _assert_same(got, ref)
    graphs = info["graphs"]
    assert graphs is not None and sorted(graphs.graphs) == [1, 2, 4, 8]
    # 5 rows replay the 8-row graph (3 padding rows), then 4, 2 and 1 as requests finish
    assert set(graphs.replays) == {1, 2, 4, 8}
    assert sum(graphs.replays.values()) >= 20  # of 25 decode-only steps
    assert info["cache_blocks"] == 64 + 1  # the padding rows' scratch block is not the block manager's


def test_decode_graphs_off(llama_path, graphs_on):
    reqs = _requests(2)
    _, info = _run(llama_path, reqs, attention_backend="triton", enforce_eager=True)
    assert info["graphs"] is None and info["cache_blocks"] == 64
    _, info = _run(llama_path, reqs, attention_backend="sdpa")  # SDPA's shapes change every step
    assert info["graphs"] is None


def test_decode_graphs_with_preemption_and_prefix_cache(llama_path, graphs_on):
    shared = prompts(1, seed=5, lo=33, hi=34)[0]
    reqs = [(shared + p, 40, {}) for p in (prompts(4, seed=6, lo=3, hi=9))]
    ref, ref_info = _run(llama_path, reqs, attention_backend="sdpa", num_blocks=9)
    got, info = _run(llama_path, reqs, attention_backend="triton", cuda_graph_max_batch=4, num_blocks=9)
    assert ref_info["preemptions"] > 0 and info["preemptions"] > 0
    _assert_same(got, ref)
    assert sum(info["graphs"].replays.values()) > 0


def test_decode_graphs_mrope(tmp_path, graphs_on):
    path = write_hf_checkpoint(str(tmp_path / "qwen2"), "qwen2", seed=7, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    p = prompts(2, seed=32, lo=30, hi=31)
    grid = torch.arange(30).expand(3, -1).clone()
    grid[1, 5:21] = 5 + torch.arange(16) // 4
    grid[2, 5:21] = 5 + torch.arange(16) % 4
    grid[:, 21:] -= 12
    reqs = [(p[0], 12, {"mrope_positions": grid, "mrope_position_delta": -12}), (p[1], 9, {})]
    ref, _ = _run(path, reqs, attention_backend="sdpa", enable_prefix_caching=False)
    got, info = _run(path, reqs, attention_backend="triton", cuda_graph_max_batch=2, enable_prefix_caching=False)
    _assert_same(got, ref)
    assert info["graphs"].mrope and set(info["graphs"].replays) == {1, 2}


def test_decode_graphs_tp2_equal_tp1(llama_path, graphs_on):
    reqs = _requests(3)
    ref, _ = _run(llama_path, reqs, attention_backend="sdpa")
    got, info = _run(llama_path, reqs, attention_backend="triton", cuda_graph_max_batch=4, tp=2)
    _assert_same(got, ref, tol=1e-3)
    assert sum(info["graphs"].replays.values()) > 0


def test_bench_decode_step_replays_graphs_at_full_batch(llama_path, graphs_on):
    from vlkit.bench.gpu import decode_step_seconds

    cfg = EngineConfig(device="cpu", num_blocks=64, attention_backend="triton", cuda_graph_max_batch=4)
    with LLMEngine.from_pretrained(llama_path, cfg) as eng:
        rec = decode_step_seconds(eng, batch=3, context=20, steps=3, warmup=1)
        assert not eng.has_unfinished()  # its requests are aborted afterwards
    assert rec["batch"] == 3 and rec["context"] == 20 and rec["step_s"] > 0
    assert rec["graph_replays"] == rec["graph_steps"] == 4  # every timed step replayed a graph


def test_rotary_needing_sequence_lengths_stays_eager(tmp_path, graphs_on):
    path = write_hf_checkpoint(str(tmp_path / "dyn"), "llama", seed=9, max_position_embeddings=32, rope_parameters={
        "rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    reqs = [(p, 30, {}) for p in prompts(2, seed=8, lo=10, hi=20)]  # past 32 positions: the base changes
    ref, _ = _run(path, reqs, attention_backend="sdpa", session_len=64)
    got, info = _run(path, reqs, attention_backend="triton", cuda_graph_max_batch=2, session_len=64)
    _assert_same(got, ref)
    assert info["graphs"].graphs == {} and info["graphs"].replays == {}
