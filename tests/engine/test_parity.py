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
