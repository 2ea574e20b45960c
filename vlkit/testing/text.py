"""Tiny random-weight text LMs in the real Hugging Face on-disk format.

``write_tiny_llama`` / ``write_tiny_qwen2`` build the transformers class, give it
deterministic random weights (:func:`~vlkit.testing.checkpoint.random_state_dict`, scaled so
greedy decoding does not repeat one token), and write config.json, generation_config.json,
weights (safetensors or .bin, optionally sharded) and a real fast tokenizer. The result
loads with ``LlamaForCausalLM.from_pretrained`` / ``Qwen2ForCausalLM.from_pretrained`` with no
missing or unexpected keys: the model class is the reference.

``write_tiny_internlm2`` writes the same LLaMA weights under InternLM2's names (no
transformers class exists for it; the original code ships with the checkpoint), and
:func:`load_internlm2_as_llama` rebuilds the reference ``LlamaForCausalLM`` from such a
directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import legacy_config as _legacy
from .checkpoint import random_state_dict, write_bin, write_config, write_safetensors

__all__ = [
    "INTERNLM2_CHAT_TEMPLATE",
    "internlm2_config_from_llama",
    "internlm2_state_dict_to_llama",
    "llama_state_dict_to_internlm2",
    "load_internlm2_as_llama",
    "tiny_llama_config",
    "tiny_qwen2_config",
    "write_tiny_internlm2",
    "write_tiny_llama",
    "write_tiny_qwen2",
]

INIT_STD = 0.2

INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _base_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size,
                 rope_scaling, max_position_embeddings, rope_theta) -> dict[str, Any]:
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads and num_heads by num_kv_heads")
    rope = {"rope_type": "default", "rope_theta": float(rope_theta)}
    if rope_scaling:
        rope.update(rope_scaling)
        if "type" in rope and "rope_type" not in rope_scaling:
            rope["rope_type"] = rope["type"]
    return {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_position_embeddings,
        "rope_parameters": rope,
        "rms_norm_eps": 1e-6,
        "initializer_range": INIT_STD,
        "hidden_act": "silu",
    }


def tiny_llama_config(*, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 1000, rope_scaling=None,
                      max_position_embeddings: int = 2048, rope_theta: float = 10000.0,
                      bos_token_id: int | None = 1, eos_token_id: int | list[int] | None = 2,
                      **overrides) -> dict[str, Any]:
    """``LlamaConfig`` keyword arguments (also usable as a VLM's ``text_config``)."""
    cfg = _base_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size,
                       rope_scaling, max_position_embeddings, rope_theta)
    cfg.update(model_type="llama", bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=False)
    cfg.update(overrides)
    return cfg


def tiny_qwen2_config(*, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 1000, rope_scaling=None,
                      max_position_embeddings: int = 2048, rope_theta: float = 1000000.0,
                      bos_token_id: int | None = 0, eos_token_id: int | list[int] | None = 2,
                      tie_word_embeddings: bool = True, **overrides) -> dict[str, Any]:
    """``Qwen2Config`` keyword arguments. Ids default to :func:`make_chatml_tokenizer`'s
    (``<|endoftext|>`` = 0 as BOS, as Qwen2's config has it; ``<|im_end|>`` = 2 as EOS)."""
    cfg = _base_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size,
                       rope_scaling, max_position_embeddings, rope_theta)
    cfg.update(model_type="qwen2", bos_token_id=bos_token_id, eos_token_id=eos_token_id,
               tie_word_embeddings=tie_word_embeddings, use_sliding_window=False)
    cfg.update(overrides)
    return cfg


def _build(model_cls, config_cls, cfg: dict[str, Any], seed: int):
    import torch

    cfg = {k: v for k, v in cfg.items() if k != "model_type"}
    config = config_cls(**cfg)
    config.architectures = [model_cls.__name__]
    torch.manual_seed(seed)
    model = model_cls(config)
    model.load_state_dict(random_state_dict(model, seed, std=INIT_STD))
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()


def _tied_keys(model) -> set[str]:
    """Keys whose storage an earlier key already holds (what save_pretrained leaves out)."""
    seen, tied = set(), set()
    for k, t in model.state_dict().items():
        ptr = t.data_ptr()
        if ptr in seen:
            tied.add(k)
        seen.add(ptr)
    return tied


def _write_weights(directory, state_dict, *, shards, fmt, max_shard_size=None):
    if fmt == "safetensors":
        return write_safetensors(directory, state_dict, shards=shards, max_shard_size=max_shard_size)
    if fmt == "bin":
        return write_bin(directory, state_dict, shards, max_shard_size=max_shard_size)
    raise ValueError(f"fmt must be 'safetensors' or 'bin', not {fmt!r}")


def _save_model(model, directory, *, shards, fmt, legacy_config, tokenizer) -> Path:
    from .tokenizer import save_tokenizer

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.config.dtype = next(model.parameters()).dtype
    cfg = model.config.to_diff_dict()  # what save_pretrained writes
    cfg.pop("transformers_version", None)
    write_config(d, _legacy(cfg) if legacy_config else cfg)
    model.generation_config.save_pretrained(d)
    tied = _tied_keys(model)
    sd = {k: v for k, v in model.state_dict().items() if k not in tied}
    _write_weights(d, sd, shards=shards, fmt=fmt)
    save_tokenizer(tokenizer, d)
    return d


def _check_vocab(tokenizer, vocab_size: int) -> None:
    if len(tokenizer) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids, more than vocab_size={vocab_size}")


def write_tiny_llama(directory, *, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 1000, rope_scaling=None,
                     max_position_embeddings: int = 2048, seed: int = 0, shards: int | None = None,
                     fmt: str = "safetensors", tokenizer=None, legacy_config: bool = False,
                     **config_overrides) -> Path:
    """A tiny ``LlamaForCausalLM`` checkpoint with a LLaMA-style tokenizer (``<unk> <s> </s>``,
    BOS prepended). ``shards`` splits the weights into that many files; ``fmt`` is
    ``"safetensors"`` or ``"bin"``; ``legacy_config`` writes config.json as transformers 4
    did (``rope_theta``/``rope_scaling``/``torch_dtype``); extra keywords go to LlamaConfig."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .tokenizer import make_tokenizer

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(vocab_size=vocab_size)
    _check_vocab(tokenizer, vocab_size)
    cfg = tiny_llama_config(hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
                            num_heads=num_heads, num_kv_heads=num_kv_heads, vocab_size=vocab_size,
                            rope_scaling=rope_scaling, max_position_embeddings=max_position_embeddings,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            **config_overrides)
    model = _build(LlamaForCausalLM, LlamaConfig, cfg, seed)
    return _save_model(model, directory, shards=shards, fmt=fmt, legacy_config=legacy_config, tokenizer=tokenizer)


def write_tiny_qwen2(directory, *, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 1000, rope_scaling=None,
                     max_position_embeddings: int = 2048, seed: int = 0, shards: int | None = None,
                     fmt: str = "safetensors", tokenizer=None, legacy_config: bool = False,
                     tie_word_embeddings: bool = True, **config_overrides) -> Path:
    """A tiny ``Qwen2ForCausalLM`` checkpoint (q/k/v biases, tied embeddings) with a ChatML
    tokenizer (:func:`~vlkit.testing.tokenizer.make_chatml_tokenizer`). Arguments as
    :func:`write_tiny_llama`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from .tokenizer import make_chatml_tokenizer

    tokenizer = tokenizer if tokenizer is not None else make_chatml_tokenizer(vocab_size=vocab_size)
    _check_vocab(tokenizer, vocab_size)
    bos = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None
    cfg = tiny_qwen2_config(hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
                            num_heads=num_heads, num_kv_heads=num_kv_heads, vocab_size=vocab_size,
                            rope_scaling=rope_scaling, max_position_embeddings=max_position_embeddings,
                            bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else bos,
                            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=tie_word_embeddings,
                            **config_overrides)
    model = _build(Qwen2ForCausalLM, Qwen2Config, cfg, seed)
    return _save_model(model, directory, shards=shards, fmt=fmt, legacy_config=legacy_config, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- InternLM2


def _dims(config: Mapping[str, Any]) -> tuple[int, int, int, int]:
    h = config["num_attention_heads"]
    kvh = config.get("num_key_value_heads") or h
    d = config.get("head_dim") or config["hidden_size"] // h
    return h, kvh, d, h // kvh


def llama_state_dict_to_internlm2(sd: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """LLaMA weights under InternLM2's names. ``attention.wqkv`` packs q/k/v per KV group as
    InternLM2's modeling code unpacks it: for each KV head, its ``num_heads // num_kv_heads``
    query heads, then its key head, then its value head (rows of ``head_dim`` each).
    ``config`` is the LLaMA config dict (``num_attention_heads``, ``num_key_value_heads``,
    ``hidden_size``, ``num_hidden_layers``)."""
    import torch

    h, kvh, d, g = _dims(config)
    out = {"model.tok_embeddings.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"],
           "output.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        q = sd[p + "self_attn.q_proj.weight"]
        hidden = q.shape[-1]
        q = q.reshape(kvh, g, d, hidden)
        k = sd[p + "self_attn.k_proj.weight"].reshape(kvh, 1, d, hidden)
        v = sd[p + "self_attn.v_proj.weight"].reshape(kvh, 1, d, hidden)
        out[p + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, hidden).contiguous()
        out[p + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[p + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[p + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        out[p + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        out[p + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        out[p + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    return out


def internlm2_state_dict_to_llama(sd: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`llama_state_dict_to_internlm2` (``config``: LLaMA or InternLM2
    config dict; the head counts are spelled the same)."""
    h, kvh, d, g = _dims(config)
    out = {"model.embed_tokens.weight": sd["model.tok_embeddings.weight"], "model.norm.weight": sd["model.norm.weight"],
           "lm_head.weight": sd["output.weight"]}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        wqkv = sd[p + "attention.wqkv.weight"]
        hidden = wqkv.shape[-1]
        wqkv = wqkv.reshape(kvh, g + 2, d, hidden)
        out[p + "self_attn.q_proj.weight"] = wqkv[:, :g].reshape(h * d, hidden).contiguous()
        out[p + "self_attn.k_proj.weight"] = wqkv[:, g].reshape(kvh * d, hidden).contiguous()
        out[p + "self_attn.v_proj.weight"] = wqkv[:, g + 1].reshape(kvh * d, hidden).contiguous()
        out[p + "self_attn.o_proj.weight"] = sd[p + "attention.wo.weight"]
        out[p + "mlp.gate_proj.weight"] = sd[p + "feed_forward.w1.weight"]
        out[p + "mlp.up_proj.weight"] = sd[p + "feed_forward.w3.weight"]
        out[p + "mlp.down_proj.weight"] = sd[p + "feed_forward.w2.weight"]
        out[p + "input_layernorm.weight"] = sd[p + "attention_norm.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[p + "ffn_norm.weight"]
    return out


def internlm2_config_from_llama(config: Mapping[str, Any]) -> dict[str, Any]:
    """InternLM2's config.json for a LLaMA config dict (either transformers spelling)."""
    rope = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling")
    theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
    if scaling is None and rope.get("rope_type", "default") != "default":
        scaling = {"type": rope["rope_type"], **{k: v for k, v in rope.items() if k != "rope_type"}}
    if isinstance(scaling, dict) and "type" not in scaling and "rope_type" in scaling:
        scaling = {"type": scaling["rope_type"], **{k: v for k, v in scaling.items() if k != "rope_type"}}
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id"),
        "pad_token_id": config.get("pad_token_id") if config.get("pad_token_id") is not None else config.get(
            "eos_token_id"),
        "hidden_act": "silu",
        "hidden_size": config["hidden_size"],
        "initializer_range": config.get("initializer_range", 0.02),
        "intermediate_size": config["intermediate_size"],
        "max_position_embeddings": config["max_position_embeddings"],
        "num_attention_heads": config["num_attention_heads"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_key_value_heads": config.get("num_key_value_heads") or config["num_attention_heads"],
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_scaling": scaling,
        "rope_theta": theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": config["vocab_size"],
    }


def write_tiny_internlm2(directory, *, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                        num_heads: int = 4, num_kv_heads: int = 2, vocab_size: int = 1000, rope_scaling=None,
                        max_position_embeddings: int = 2048, seed: int = 0, shards: int | None = None,
                        fmt: str = "safetensors", tokenizer=None) -> Path:
    """A tiny InternLM2 checkpoint (``architectures: ["InternLM2ForCausalLM"]``,
    ``model_type: "internlm2"``): the weights :func:`write_tiny_llama` would write with the
    same arguments, renamed and packed by :func:`llama_state_dict_to_internlm2`. The
    tokenizer is LLaMA-style plus ``<|im_start|>``/``<|im_end|>`` with an InternLM2 chat
    template. No modeling code is written: :func:`load_internlm2_as_llama` is the reference."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from .tokenizer import make_tokenizer, save_tokenizer

    if tokenizer is None:
        tokenizer = make_tokenizer(["<|im_start|>", "<|im_end|>"], vocab_size, chat_template=INTERNLM2_CHAT_TEMPLATE)
    _check_vocab(tokenizer, vocab_size)
    cfg = tiny_llama_config(hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
                            num_heads=num_heads, num_kv_heads=num_kv_heads, vocab_size=vocab_size,
                            rope_scaling=rope_scaling, max_position_embeddings=max_position_embeddings,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = _build(LlamaForCausalLM, LlamaConfig, cfg, seed)
    llama_cfg = model.config.to_dict()
    d = Path(directory)
    write_config(d, internlm2_config_from_llama(llama_cfg))
    model.generation_config.save_pretrained(d)
    _write_weights(d, llama_state_dict_to_internlm2(model.state_dict(), llama_cfg), shards=shards, fmt=fmt)
    save_tokenizer(tokenizer, d)
    return d


def _read_weights(directory: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = directory / index_name
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else (
            [single] if (directory / single).exists() else [])
        for f in files:
            if f.endswith(".safetensors"):
                out.update(load_file(str(directory / f)))
            else:
                out.update(torch.load(directory / f, map_location="cpu", weights_only=True))
        if out:
            return out
    raise FileNotFoundError(f"no weights in {directory}")


def load_internlm2_as_llama(directory, dtype=None):
    """The reference for an InternLM2 directory: a ``LlamaForCausalLM`` holding its weights
    unpacked with :func:`internlm2_state_dict_to_llama` (InternLM2 without biases is LLaMA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = Path(directory)
    icfg = json.loads((d / "config.json").read_text())
    if icfg.get("bias"):
        raise ValueError("InternLM2 with bias=True is not LLaMA")
    kw = {k: icfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                               "bos_token_id", "eos_token_id")}
    rope = {"rope_type": "default", "rope_theta": float(icfg.get("rope_theta", 10000.0))}
    if icfg.get("rope_scaling"):
        sc = dict(icfg["rope_scaling"])
        rope.update(sc)
        rope["rope_type"] = sc.get("rope_type", sc.get("type", "default"))
        rope.pop("type", None)
    config = LlamaConfig(**kw, rope_parameters=rope, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.load_state_dict(internlm2_state_dict_to_llama(_read_weights(d), icfg), strict=True)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
