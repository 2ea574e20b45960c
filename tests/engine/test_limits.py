"""Requests that cannot run fail fast with a clear message; nothing hangs."""

from __future__ import annotations

import pytest
import torch

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine


def test_prompt_over_session_len(llama_path):
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=64, session_len=64, device="cpu")) as eng:
        with pytest.raises(ValueError, match=r"60 tokens \+ max_new_tokens 10 = 70 exceeds session_len 64"):
            eng.add_request(None, [5] * 60, GenerationConfig(max_new_tokens=10))
        with pytest.raises(ValueError, match="empty"):
            eng.add_request(None, [], GenerationConfig())
        with pytest.raises(ValueError, match="token ids"):
            eng.add_request(None, [100000], GenerationConfig(max_new_tokens=1))
        with pytest.raises(ValueError, match="embedding"):
            eng.add_request(None, [5] * 10, GenerationConfig(max_new_tokens=1),
                            input_embeddings=[torch.zeros(3, 64)], embedding_ranges=[(0, 4)])
        assert not eng.has_unfinished()


def test_session_len_defaults_to_max_position_embeddings(llama_path):
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=8, device="cpu")) as eng:
        assert eng.session_len == 512


def test_prompt_that_never_fits_the_cache(llama_path):
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=2, block_size=16, device="cpu")) as eng:
        with pytest.raises(ValueError, match=r"needs 3 KV-cache blocks .* only 2"):
            eng.add_request(None, list(range(3, 40)), GenerationConfig(max_new_tokens=4))
        # fits at first, then outgrows the whole cache: stops with "length", no hang
        out = eng.generate(list(range(3, 20)), GenerationConfig(max_new_tokens=100, ignore_eos=True))
        assert out.finish_reason == "length" and len(out.token_ids) == 32 - 17 + 1
        assert eng.block_manager.num_free_blocks == 2


def test_duplicate_id_and_closed_engine(llama_path):
    eng = LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=8, device="cpu"))
    eng.add_request("a", [5, 6, 7], GenerationConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="already running"):
        eng.add_request("a", [5, 6, 7], GenerationConfig(max_new_tokens=2))
    eng.close()
    with pytest.raises(RuntimeError, match="closed"):
        eng.add_request("b", [5, 6, 7], GenerationConfig(max_new_tokens=2))
