"""Per-request sampling: batch invariance, seeds, filters, stop conditions, logprobs."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import prompts

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine
from vlkit.engine.sampling import Sampler
from vlkit.engine.sequence import Request, Sequence
from vlkit.engine.stopping import StopCriteria


@pytest.fixture(scope="module")
def engine(llama_path):
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=128, device="cpu")) as eng:
        yield eng


def test_greedy_batch_invariance(engine):
    ps = prompts(8, seed=11)
    g = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    alone = engine.generate(ps[3], g).token_ids
    batched = engine.generate(ps, g)
    assert batched[3].token_ids == alone


def test_seeded_sampling_same_alone_and_batched(engine):
    ps = prompts(8, seed=12)
    seeded = GenerationConfig(max_new_tokens=20, do_sample=True, temperature=1.5, top_p=0.95, top_k=50,
                              random_seed=1234, ignore_eos=True)
    other = GenerationConfig(max_new_tokens=20, do_sample=True, temperature=1.0, ignore_eos=True)
    alone = engine.generate(ps[5], seeded).token_ids
    cfgs = [other] * 8
    cfgs[5] = seeded
    batched = engine.generate(ps, cfgs)
    assert batched[5].token_ids == alone
    again = engine.generate(ps[5], seeded).token_ids
    assert again == alone
    different = engine.generate(ps[5], seeded.replace(random_seed=99)).token_ids
    assert different != alone
    greedy = engine.generate(ps[5], GenerationConfig(max_new_tokens=20, ignore_eos=True)).token_ids
    assert greedy != alone  # temperature 1.5 on a random model really samples


def test_top_k_1_is_greedy(engine):
    p = prompts(1, seed=13)[0]
    greedy = engine.generate(p, GenerationConfig(max_new_tokens=16, ignore_eos=True)).token_ids
    k1 = engine.generate(p, GenerationConfig(max_new_tokens=16, do_sample=True, top_k=1, temperature=2.0,
                                             ignore_eos=True)).token_ids
    assert k1 == greedy


def test_stop_token_ids_and_eos(engine):
    p = prompts(1, seed=14)[0]
    full = engine.generate(p, GenerationConfig(max_new_tokens=16, ignore_eos=True)).token_ids
    stop = full[5]
    first = full.index(stop)
    out = engine.generate(p, GenerationConfig(max_new_tokens=16, stop_token_ids=[stop], ignore_eos=True))
    assert out.token_ids == full[: first + 1] and out.finish_reason == "stop"
    # the same token as EOS stops too, unless ignore_eos
    engine.stopping.eos_token_ids.add(stop)
    try:
        out = engine.generate(p, GenerationConfig(max_new_tokens=16))
        assert out.token_ids == full[: first + 1] and out.finish_reason == "stop"
        out = engine.generate(p, GenerationConfig(max_new_tokens=16, ignore_eos=True))
        assert out.token_ids == full and out.finish_reason == "length"
        # min_new_tokens: EOS is masked until reached, and cannot stop before it
        out = engine.generate(p, GenerationConfig(max_new_tokens=16, min_new_tokens=first + 3))
        assert len(out.token_ids) >= first + 3
        assert stop not in out.token_ids[: first + 3]
        assert out.token_ids[:first] == full[:first]
    finally:
        engine.stopping.eos_token_ids.discard(stop)


def test_max_new_tokens_and_zero(engine):
    p = prompts(1, seed=15)[0]
    out = engine.generate(p, GenerationConfig(max_new_tokens=7, ignore_eos=True))
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    out = engine.generate(p, GenerationConfig(max_new_tokens=0))
    assert out.token_ids == [] and out.finished


def test_logprobs_are_log_softmax(engine):
    p = prompts(1, seed=16)[0]
    out = engine.generate(p, GenerationConfig(max_new_tokens=3, logprobs=5, ignore_eos=True))
    assert len(out.logprobs) == 3
    ref = torch.log_softmax(engine.get_logits(p)[-1], dim=-1)
    first = out.logprobs[0]
    top = ref.topk(5)
    assert set(top.indices.tolist()) <= set(first)
    for tok, lp in first.items():
        assert lp == pytest.approx(ref[tok].item(), abs=1e-5)
    assert out.token_ids[0] == top.indices[0].item()  # greedy picks the best


def _seq(token_ids, **gen):
    return Sequence(Request(token_ids, GenerationConfig(**gen), "x"))


def test_repetition_penalty_matches_hf():
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    seqs = [_seq([1, 4, 4, 9], repetition_penalty=1.3), _seq([2, 3], repetition_penalty=0.8)]
    tokens = Sampler(StopCriteria(set(), 1 << 20))(logits.clone(), seqs).token_ids
    for i, s in enumerate(seqs):
        proc = RepetitionPenaltyLogitsProcessor(s.gen_config.repetition_penalty)
        ref = proc(torch.tensor([s.token_ids]), logits[i : i + 1].clone())
        assert tokens[i] == ref.argmax().item()


def test_top_p_min_p_keep_only_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = set()
    for seed in range(200):
        s = _seq([0], do_sample=True, top_p=0.7, random_seed=seed)
        s.generator = torch.Generator().manual_seed(seed)
        seen.add(Sampler(StopCriteria(set(), 1 << 20))(logits.clone(), [s]).token_ids[0])
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.7
    seen = set()
    for seed in range(200):
        s = _seq([0], do_sample=True, min_p=0.25)
        s.generator = torch.Generator().manual_seed(seed)
        seen.add(Sampler(StopCriteria(set(), 1 << 20))(logits.clone(), [s]).token_ids[0])
    assert seen == {0, 1, 2}  # 0.05 < 0.25 * 0.5
