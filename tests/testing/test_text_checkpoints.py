import json
from collections import Counter

import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, LlamaForCausalLM, Qwen2ForCausalLM

from vlkit.testing import (
    internlm2_state_dict_to_llama,
    legacy_config,
    llama_state_dict_to_internlm2,
    load_internlm2_as_llama,
    random_state_dict,
    write_bin,
    write_safetensors,
    write_tiny_internlm2,
    write_tiny_llama,
    write_tiny_qwen2,
)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return {
        "llama": write_tiny_llama(root / "llama"),
        "llama_sharded": write_tiny_llama(root / "llama_sharded", shards=3),
        "llama_bin": write_tiny_llama(root / "llama_bin", fmt="bin"),
        "llama_bin_sharded": write_tiny_llama(root / "llama_bin_sharded", fmt="bin", shards=2),
        "qwen2": write_tiny_qwen2(root / "qwen2"),
        "internlm2": write_tiny_internlm2(root / "internlm2"),
    }


def load(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def greedy(model, ids, n=24):
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def assert_not_degenerate(tokens):
    counts = Counter(tokens)
    assert len(counts) >= len(tokens) // 3, tokens
    assert counts.most_common(1)[0][1] <= len(tokens) // 3, tokens


@pytest.mark.parametrize("name,cls", [("llama", LlamaForCausalLM), ("qwen2", Qwen2ForCausalLM)])
def test_loads_cleanly_and_generates_varied_tokens(ckpts, name, cls):
    path = ckpts[name]
    model = load(cls, path)
    tok = AutoTokenizer.from_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == [cls.__name__] and cfg["vocab_size"] == len(tok)
    assert cfg["eos_token_id"] == tok.eos_token_id
    for text in ("What is shown in this image?", "Hello"):
        assert_not_degenerate(greedy(model, tok(text).input_ids))
    logits = model(torch.tensor([tok("Hello world").input_ids])).logits
    assert logits.std() > 0.5


def test_qwen2_has_bias_tied_embeddings_and_chatml(ckpts):
    path = ckpts["qwen2"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in keys and "model.layers.0.self_attn.q_proj.bias" in keys
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|im_end|>" and tok.bos_token is None
    assert (path / "chat_template.jinja").exists()


def test_same_seed_same_weights_other_seed_differs(tmp_path, ckpts):
    a = write_tiny_llama(tmp_path / "a")
    b = write_tiny_llama(tmp_path / "b", seed=1)
    blob = (ckpts["llama"] / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() == blob
    assert (b / "model.safetensors").read_bytes() != blob


@pytest.mark.parametrize("variant,files", [
    ("llama_sharded", ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                       "model-00003-of-00003.safetensors", "model.safetensors.index.json"]),
    ("llama_bin", ["pytorch_model.bin"]),
    ("llama_bin_sharded", ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                           "pytorch_model.bin.index.json"]),
])
def test_sharded_and_bin_variants_match_unsharded(ckpts, variant, files):
    path = ckpts[variant]
    weight_files = sorted(p.name for p in path.iterdir() if p.name.startswith(("model", "pytorch_model")))
    assert weight_files == files
    index = [f for f in files if f.endswith(".index.json")]
    if index:
        idx = json.loads((path / index[0]).read_text())
        assert set(idx["weight_map"].values()) == set(files) - set(index)
        assert idx["metadata"]["total_size"] == 4 * idx["metadata"]["total_parameters"]
    ids = torch.tensor([[1, 40, 50, 60, 70, 80]])
    with torch.inference_mode():
        ref = load(LlamaForCausalLM, ckpts["llama"])(ids).logits
        got = load(LlamaForCausalLM, path)(ids).logits
    assert torch.equal(ref, got)


def test_write_safetensors_max_shard_size_and_dtype(tmp_path):
    sd = {f"w{i}": torch.randn(16, 16) for i in range(6)}  # 1 KiB each, 512 B in fp16
    files = write_safetensors(tmp_path, sd, max_shard_size="2KiB", dtype=torch.float16)  # sized after the cast
    assert [p.name for p in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    idx = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert idx["metadata"]["total_size"] == 6 * 16 * 16 * 2
    with safe_open(str(files[0]), "pt") as f:
        assert f.get_tensor("w0").dtype == torch.float16 and f.metadata() == {"format": "pt"}
    bins = write_bin(tmp_path / "bin", sd, shards=4)
    assert len(bins) == 4
    loaded = {}
    for p in bins:
        loaded.update(torch.load(p, weights_only=True))
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)


def test_random_state_dict_deterministic_and_tied():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 10))
    model[2].weight = model[0].weight
    a, b = random_state_dict(model, 3), random_state_dict(model, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["0.weight"], a["2.weight"])
    assert not torch.equal(a["0.weight"], random_state_dict(model, 4)["0.weight"])
    assert (a["1.weight"] - 1).abs().max() < 0.5 and a["1.bias"].abs().max() < 0.2


def test_internlm2_layout_and_reference(ckpts):
    path = ckpts["internlm2"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["InternLM2ForCausalLM"] and cfg["model_type"] == "internlm2"
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        wqkv = f.get_tensor("model.layers.0.attention.wqkv.weight")
    assert {"model.tok_embeddings.weight", "output.weight", "model.norm.weight", "model.layers.1.attention.wo.weight",
            "model.layers.1.feed_forward.w1.weight", "model.layers.1.feed_forward.w2.weight",
            "model.layers.1.feed_forward.w3.weight", "model.layers.1.attention_norm.weight",
            "model.layers.1.ffn_norm.weight"} <= keys
    assert not any("self_attn" in k or "mlp" in k for k in keys)
    h, kvh, d = 4, 2, 16
    assert wqkv.shape == ((h + 2 * kvh) * d, 64)
    # same seed: the InternLM2 weights are write_tiny_llama's, packed
    llama = load(LlamaForCausalLM, ckpts["llama"])
    ref = load_internlm2_as_llama(path)
    ids = torch.tensor([[1, 5, 300, 7, 999]])
    with torch.inference_mode():
        assert torch.equal(ref(ids).logits, llama(ids).logits)
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_tokens_to_ids("<|im_end|>") < 1000 and tok("hi").input_ids[0] == tok.bos_token_id


def test_internlm2_packing_per_kv_group_and_round_trip():
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 8, "num_hidden_layers": 1}
    d = 2
    # each row holds its (projection, head) label so the packed order can be read back
    q = torch.arange(4).repeat_interleave(d)[:, None].float().expand(8, 8) + 100
    k = torch.arange(2).repeat_interleave(d)[:, None].float().expand(4, 8) + 200
    v = torch.arange(2).repeat_interleave(d)[:, None].float().expand(4, 8) + 300
    sd = {"model.embed_tokens.weight": torch.randn(5, 8), "model.norm.weight": torch.ones(8),
          "lm_head.weight": torch.randn(5, 8), "model.layers.0.self_attn.q_proj.weight": q,
          "model.layers.0.self_attn.k_proj.weight": k, "model.layers.0.self_attn.v_proj.weight": v}
    for name in ("o_proj",):
        sd[f"model.layers.0.self_attn.{name}.weight"] = torch.randn(8, 8)
    for name in ("gate_proj", "up_proj", "down_proj"):
        sd[f"model.layers.0.mlp.{name}.weight"] = torch.randn(8, 8)
    for name in ("input_layernorm", "post_attention_layernorm"):
        sd[f"model.layers.0.{name}.weight"] = torch.randn(8)
    packed = llama_state_dict_to_internlm2(sd, cfg)
    order = packed["model.layers.0.attention.wqkv.weight"][::d, 0].tolist()
    assert order == [100, 101, 200, 300, 102, 103, 201, 301]  # group: q heads, k, v
    back = internlm2_state_dict_to_llama(packed, cfg)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_legacy_config_spelling(tmp_path):
    path = write_tiny_llama(tmp_path / "legacy", legacy_config=True,
                            rope_scaling={"rope_type": "linear", "factor": 2.0})
    cfg = json.loads((path / "config.json").read_text())
    assert "rope_parameters" not in cfg and cfg["rope_theta"] == 10000.0
    assert cfg["rope_scaling"]["factor"] == 2.0 and cfg["torch_dtype"] == "float32"
    model = load(LlamaForCausalLM, path)
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert legacy_config({"rope_parameters": {"rope_type": "default", "rope_theta": 5.0}}) == {
        "rope_theta": 5.0, "rope_scaling": None}


def test_tiny_configs_build_transformers_configs():
    from transformers import LlamaConfig, LlavaConfig, Qwen2Config

    from vlkit.testing import tiny_llama_config, tiny_qwen2_config

    llama = LlamaConfig(**{k: v for k, v in tiny_llama_config(num_layers=3).items() if k != "model_type"})
    assert llama.num_hidden_layers == 3 and llama.num_key_value_heads == 2
    qwen = Qwen2Config(**{k: v for k, v in tiny_qwen2_config().items() if k != "model_type"})
    assert qwen.tie_word_embeddings and qwen.rope_parameters["rope_theta"] == 1e6
    llava = LlavaConfig(text_config=tiny_llama_config(), vision_config={"model_type": "clip_vision_model"})
    assert isinstance(llava.text_config, LlamaConfig) and llava.text_config.hidden_size == 64


def test_custom_tokenizer_is_saved_and_checked(tmp_path):
    from vlkit.testing import make_tokenizer

    tok = make_tokenizer(["<image>"], vocab_size=500)
    path = write_tiny_llama(tmp_path / "custom", vocab_size=500, tokenizer=tok)
    assert AutoTokenizer.from_pretrained(path)("<image>", add_special_tokens=False).input_ids == [3]
    with pytest.raises(ValueError):
        write_tiny_llama(tmp_path / "too_small", vocab_size=400, tokenizer=tok)
