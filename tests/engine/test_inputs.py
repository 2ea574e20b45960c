"""Inputs embeddings and M-RoPE positions."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import prompts, write_hf_checkpoint

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine
from vlkit.layers.rotary import RotaryEmbedding, apply_rotary

GEN = GenerationConfig(max_new_tokens=16, ignore_eos=True)


def _run(eng, p, **kw):
    eng.add_request("r", p, GEN, **kw)
    out = None
    while eng.has_unfinished():
        for o in eng.step():
            out = o
    return out.token_ids


def test_input_embeddings_equal_to_token_embeddings(llama_path):
    p = prompts(1, seed=31, lo=40, hi=41)[0]
    # small chunks so the embedding ranges are split across prefill chunks
    with LLMEngine.from_pretrained(llama_path, EngineConfig(num_blocks=64, device="cpu",
                                                            max_prefill_token_num=9)) as eng:
        plain = _run(eng, p)
        table = eng.runner.model.model.embed_tokens.weight.detach()
        ranges = [(3, 15), (20, 33)]
        embs = [table[torch.tensor(p[s:e])].clone() for s, e in ranges]
        assert _run(eng, p, input_embeddings=embs, embedding_ranges=ranges, embedding_hashes=["a", "b"]) == plain
        # and the embeddings are really used: other rows change the output
        noise = [torch.randn_like(e) for e in embs]
        assert _run(eng, p, input_embeddings=noise, embedding_ranges=ranges, embedding_hashes=["c", "d"]) != plain
        logits = eng.get_logits(p, input_embeddings=embs, embedding_ranges=ranges)
        torch.testing.assert_close(logits, eng.get_logits(p))


@pytest.fixture(scope="module")
def mrope_path(tmp_path_factory):
    # Qwen2 with M-RoPE sections (head_dim 16 -> 8 frequencies split 2/3/3)
    path = str(tmp_path_factory.mktemp("mrope") / "qwen2")
    write_hf_checkpoint(path, "qwen2", seed=7,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    return path


def test_mrope_equal_axes_is_1d_rope(mrope_path):
    p = prompts(1, seed=32, lo=30, hi=31)[0]
    with LLMEngine.from_pretrained(mrope_path, EngineConfig(num_blocks=64, device="cpu",
                                                            enable_prefix_caching=False)) as eng:
        plain = _run(eng, p)
        pos = torch.arange(len(p)).expand(3, -1).clone()
        assert _run(eng, p, mrope_positions=pos, mrope_position_delta=0) == plain
        # real 3-D positions (an "image" grid in the middle) change the result; delta shifts decode
        grid = pos.clone()
        grid[1, 5:21] = 5 + torch.arange(16) // 4
        grid[2, 5:21] = 5 + torch.arange(16) % 4
        grid[:, 21:] -= 12
        assert _run(eng, p, mrope_positions=grid, mrope_position_delta=-12) != plain
        torch.testing.assert_close(eng.get_logits(p, mrope_positions=pos), eng.get_logits(p))


def test_mrope_rotary_matches_qwen2_vl():
    tv = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")
    from transformers import Qwen2VLTextConfig

    section = [4, 6, 6]
    head_dim = 32
    cfg = Qwen2VLTextConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section})
    torch.manual_seed(0)
    t = 12
    pos = torch.stack([torch.arange(t), torch.arange(t) // 3, torch.arange(t) % 3 + 2])  # [3, T]
    q = torch.randn(1, 4, t, head_dim)
    hf_rot = tv.Qwen2VLRotaryEmbedding(cfg)
    cos, sin = hf_rot(q, pos[:, None, :])
    if hasattr(tv, "apply_multimodal_rotary_pos_emb"):
        ref, _ = tv.apply_multimodal_rotary_pos_emb(q, q, cos, sin, section)
    else:
        ref, _ = tv.apply_rotary_pos_emb(q, q, cos, sin)
    ours = RotaryEmbedding(head_dim, cfg.to_dict())
    c, s = ours(pos)
    out = apply_rotary(q[0].transpose(0, 1), c, s).transpose(0, 1)[None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
