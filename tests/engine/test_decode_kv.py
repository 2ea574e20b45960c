"""The decode KV kept between steps gives what gathering the blocks every step gives."""

from __future__ import annotations

import torch
from engine_helpers import prompts

import vlkit.engine.runner as runner_mod
from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine

BUDGET = runner_mod.DECODE_KV_MAX_BYTES


def _run(path, budget, monkeypatch, **kw):
    """Staggered arrivals, different lengths (rows leave), > 64 tokens (capacity refills)."""
    monkeypatch.setattr(runner_mod, "DECODE_KV_MAX_BYTES", budget)
    ps = prompts(6, seed=31, lo=5, hi=40)
    lens = [80, 12, 40, 3, 70, 25]
    cfg = EngineConfig(device="cpu", num_blocks=kw.pop("num_blocks", 128), **kw)
    reused = 0
    with LLMEngine.from_pretrained(path, cfg) as eng:
        forward = eng.runner._forward

        def counting(inp):
            nonlocal reused
            reused += inp.decode_reuse and eng.runner._decode_kv is not None
            return forward(inp)

        eng.runner._forward = counting
        out = {}
        for i, (p, n) in enumerate(zip(ps, lens)):
            eng.add_request(f"r{i}", p, GenerationConfig(max_new_tokens=n, ignore_eos=True, logprobs=0))
            for o in eng.step():  # the next request joins while these decode
                out.setdefault(o.request_id, []).extend(zip(o.new_token_ids, o.new_logprobs))
        while eng.has_unfinished():
            for o in eng.step():
                out.setdefault(o.request_id, []).extend(zip(o.new_token_ids, o.new_logprobs))
        preemptions = eng.stats()["num_preemptions"]
    return out, reused, preemptions


def test_kept_decode_kv_matches_gather(llama_path, monkeypatch):
    ref, reused, _ = _run(llama_path, 0, monkeypatch)
    assert reused == 0
    got, reused, _ = _run(llama_path, BUDGET, monkeypatch)
    assert reused > 50
    assert got.keys() == ref.keys()
    for rid in ref:
        assert [t for t, _ in got[rid]] == [t for t, _ in ref[rid]]
        for (_, a), (_, b) in zip(got[rid], ref[rid]):
            torch.testing.assert_close(list(a.values()), list(b.values()), atol=1e-5, rtol=1e-5)


def test_kept_decode_kv_with_preemption(llama_path, monkeypatch):
    ref, _, _ = _run(llama_path, 0, monkeypatch)
    got, reused, preemptions = _run(llama_path, BUDGET, monkeypatch, num_blocks=14)
    assert preemptions > 0 and reused > 0
    assert {k: [t for t, _ in v] for k, v in got.items()} == {k: [t for t, _ in v] for k, v in ref.items()}
