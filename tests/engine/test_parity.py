"""Same tokens and logits as transformers on tiny random checkpoints (fp32)."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import hf_greedy, prompts, write_hf_checkpoint

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine

GEN = GenerationConfig(max_new_tokens=32, ignore_eos=True)


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _check_parity(path, hf_path=None, n_prompts=8):
    hf = _hf(hf_path or path)
    ps = prompts(n_prompts)
    with LLMEngine.from_pretrained(path, EngineConfig(num_blocks=128, dtype="float32", device="cpu")) as eng:
        outs = eng.generate(ps, GEN)  # all submitted together
        for p, o in zip(ps, outs):
            assert o.token_ids == hf_greedy(hf, p, 32)
            assert o.finish_reason == "length"
        for p in ps[:2]:
            with torch.inference_mode():
                ref = hf(torch.tensor([p])).logits[0]
            torch.testing.assert_close(eng.get_logits(p), ref, atol=1e-4, rtol=1e-4)


def test_llama_parity(llama_path):
    _check_parity(llama_path)


def test_qwen2_parity_tied_embeddings(qwen2_path):
    _check_parity(qwen2_path)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 16, "rope_theta": 500000.0},
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    ],
    ids=["llama3", "linear"],
)
def test_llama_rope_scaling_parity(tmp_path, rope):
    path = write_hf_checkpoint(str(tmp_path / "m"), "llama", seed=3, rope_parameters=rope)
    _check_parity(path, n_prompts=4)


def test_llama_dynamic_rope_parity(tmp_path):
    # max_position_embeddings 24 < prompt + output: the NTK base grows with the sequence
    path = write_hf_checkpoint(
        str(tmp_path / "m"), "llama", seed=4, max_position_embeddings=24,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    )
    ps = prompts(3, seed=5, lo=20, hi=30)
    cfg = EngineConfig(num_blocks=64, session_len=256, device="cpu")
    with LLMEngine.from_pretrained(path, cfg) as eng:
        outs = eng.generate(ps, GenerationConfig(max_new_tokens=12, ignore_eos=True))
    for p, o in zip(ps, outs):  # HF's rotary keeps the longest length seen: fresh model per prompt
        assert o.token_ids == hf_greedy(_hf(path), p, 12)


def test_internlm2_matches_llama(internlm2_path, llama_path):
    _check_parity(internlm2_path, hf_path=llama_path, n_prompts=4)


def test_phi3_parity_fused_checkpoint_weights(phi3_path):
    _check_parity(phi3_path)


def test_phi3_longrope_parity(tmp_path):
    # pretrained on 32 positions, extended to 128: prompts of 20-44 tokens plus 12 new ones
    # cross from the short factors to the long ones (prefill of a long prompt, or mid-decode)
    half = 64 // 4 // 2
    rope = {"rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "long_factor": [1.5 + 0.7 * i for i in range(half)]}
    path = write_hf_checkpoint(str(tmp_path / "m"), "phi3", seed=6, max_position_embeddings=128,
                               original_max_position_embeddings=32, rope_parameters=rope)
    ps = prompts(4, seed=7, lo=20, hi=44)
    with LLMEngine.from_pretrained(path, EngineConfig(num_blocks=64, device="cpu")) as eng:
        rot = eng.runner.model.model.rotary_emb
        assert rot.rope_type == "longrope" and rot.attention_factor > 1.0
        outs = eng.generate(ps, GenerationConfig(max_new_tokens=12, ignore_eos=True))
        for p in (ps[0], max(ps, key=len)):  # short, then long: the factors switch with the length
            with torch.inference_mode():
                ref = _hf(path)(torch.tensor([p])).logits[0]
            torch.testing.assert_close(eng.get_logits(p), ref, atol=1e-4, rtol=1e-4)
        # a sequence that grows past 32 is computed again with the long factors, as HF does
        assert eng.stats()["num_rope_recomputes"] == sum(len(p) <= 32 < len(p) + 11 for p in ps) > 0
    for p, o in zip(ps, outs):  # HF's rotary keeps its last factors: a fresh model per prompt
        assert o.token_ids == hf_greedy(_hf(path), p, 12)


def test_sliding_window_limits_the_session(tmp_path):
    path = write_hf_checkpoint(str(tmp_path / "m"), "phi3", seed=8, sliding_window=48)
    with LLMEngine.from_pretrained(path, EngineConfig(num_blocks=16, device="cpu")) as eng:
        assert eng.session_len == 48
        with pytest.raises(ValueError, match="session_len"):
            eng.generate(prompts(1, seed=9, lo=40, hi=41)[0], GenerationConfig(max_new_tokens=20))
    with pytest.raises(ValueError, match="sliding_window 48"):
        LLMEngine.from_pretrained(path, EngineConfig(session_len=100, num_blocks=16, device="cpu"))
