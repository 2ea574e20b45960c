"""Tiny random-weight text checkpoints in the real on-disk format, and helpers for the engine tests."""

from __future__ import annotations

import json
import os

import torch

VOCAB = 512


def write_tokenizer(path: str, vocab_size: int = VOCAB) -> None:
    """A word-level fast tokenizer: ``<unk> <s> </s>`` then ``w3 ... w{vocab-1}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def _common(**kw):
    base = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        initializer_range=0.08,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    base.update(kw)
    return base


def write_hf_checkpoint(path: str, arch: str = "llama", seed: int = 0, **kw) -> str:
    """``arch`` in llama / qwen2 / phi3; extra kwargs go to the HF config."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**_common(**kw)))
    elif arch == "phi3":
        model = Phi3ForCausalLM(Phi3Config(**_common(**{"pad_token_id": 0, **kw})))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**_common(**kw)))
    model.eval().save_pretrained(path)
    write_tokenizer(path)
    return path


def write_internlm2_from_llama(llama_path: str, path: str) -> str:
    """Repack a LLaMA checkpoint under InternLM2's names (``wqkv`` packed per KV group)."""
    from safetensors.torch import load_file, save_file

    with open(os.path.join(llama_path, "config.json")) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(llama_path, "model.safetensors"))
    h, kvh = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // h
    g = h // kvh
    out = {"model.tok_embeddings.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        q = sd[p + "self_attn.q_proj.weight"].view(kvh, g, d, -1)
        k = sd[p + "self_attn.k_proj.weight"].view(kvh, 1, d, -1)
        v = sd[p + "self_attn.v_proj.weight"].view(kvh, 1, d, -1)
        out[p + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1]).contiguous()
        out[p + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[p + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[p + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        out[p + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[p + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    os.makedirs(path, exist_ok=True)
    save_file(out, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    rope = cfg.get("rope_parameters") or {}
    icfg = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": h,
        "num_key_value_heads": kvh,
        "vocab_size": cfg["vocab_size"],
        "max_position_embeddings": cfg["max_position_embeddings"],
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None,
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(icfg, f)
    write_tokenizer(path)
    return path


def prompts(n: int = 8, seed: int = 0, lo: int = 3, hi: int = 40) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (n_,), generator=g).tolist() for n_ in lens]


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """HF generate, one prompt at a time (no padding), EOS never stops it."""
    from transformers import GenerationConfig as HFGen

    gen = HFGen(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), generation_config=gen)
    return out[0, len(prompt):].tolist()


def assert_next_step_fails_with_dead_worker(eng, within_s: float = 30.0) -> None:
    """A new request's steps raise :class:`WorkerDiedError`, within ``within_s`` seconds (no hang)."""
    import time

    import pytest

    from vlkit.config import GenerationConfig
    from vlkit.engine.workers import WorkerDiedError

    eng.add_request("after-death", [5, 6, 7], GenerationConfig(max_new_tokens=4))
    t = time.time()
    with pytest.raises(WorkerDiedError):
        while eng.has_unfinished():
            eng.step()
    assert time.time() - t < within_s


def paged_decode_reference(q, cache, tables, lens, scale):
    """Decode attention of ``q`` ``[B, heads, D]`` over each sequence's paged context, one SDPA
    per sequence in fp32 (the reference for vlkit.kernels.paged_decode)."""
    import torch.nn.functional as F

    out = torch.zeros_like(q)
    bs, kvh, d = cache.shape[2], cache.shape[3], cache.shape[4]
    for i, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        p = torch.arange(n)
        slots = tables[i].long()[p // bs] * bs + p % bs
        k = cache[0].reshape(-1, kvh, d)[slots].transpose(0, 1)[None].float()
        v = cache[1].reshape(-1, kvh, d)[slots].transpose(0, 1)[None].float()
        o = F.scaled_dot_product_attention(q[i].float()[None, :, None], k, v, scale=scale, enable_gqa=True)
        out[i] = o[0, :, 0].to(q.dtype)
    return out
