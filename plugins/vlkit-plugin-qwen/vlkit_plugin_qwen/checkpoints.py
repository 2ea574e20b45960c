"""Tiny random-weight Qwen2-VL / Qwen2.5-VL checkpoints in the real on-disk layout.

:func:`tiny_qwen2_vl` and :func:`tiny_qwen2_5_vl` build transformers'
``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` (vision depth 2,
embed 32, 2 heads, patch 14, merge 2, temporal patch 2; Qwen2 text model hidden 64, 2 layers,
M-RoPE sections ``[2, 3, 3]``) and write what the hub repositories carry: ``config.json`` +
``model.safetensors`` from ``save_pretrained`` (``model.*``, ``visual.*``, ``lm_head.*``),
``preprocessor_config.json`` (``Qwen2VLImageProcessor`` with small ``min_pixels`` /
``max_pixels``), ``video_preprocessor_config.json`` (the same pixel range for video frames), ``generation_config.json`` (stop on ``<|im_end|>`` and ``<|endoftext|>``), a
ChatML tokenizer with Qwen's special tokens and the checkpoints' chat template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

QWEN_SPECIALS = (
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
VOCAB_SIZE = 1024
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TEMPLATE = Path(__file__).parent / "templates" / "qwen2-vl.jinja"


def write_tokenizer(directory: str | Path) -> Any:
    """A byte-level BPE ChatML tokenizer with Qwen2-VL's special tokens and chat template."""
    from vlkit.testing.tokenizer import make_chatml_tokenizer, save_tokenizer

    tok = make_chatml_tokenizer(special_tokens=list(QWEN_SPECIALS), vocab_size=1000,
                                chat_template=TEMPLATE.read_text())
    save_tokenizer(tok, directory)
    return tok


def _randomize(model: Any, seed: int) -> None:
    """Weights large enough that every part (vision included) changes the logits."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(norm\d?|ln_\w+|layernorm)\.weight$", name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def _text_config(**overrides: Any) -> dict[str, Any]:
    cfg = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB_SIZE, max_position_embeddings=4096, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=0, eos_token_id=2, pad_token_id=0,
    )
    cfg.update(overrides)
    return cfg


LAYOUTS = ("transformers", "released", "nested-prefixes")


def _finish(directory: Path, model: Any, tok: Any, min_pixels: int, max_pixels: int, layout: str = "transformers") -> Path:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    model.save_pretrained(str(directory))
    if layout == "released":
        _to_released_layout(directory)
    elif layout == "nested-prefixes":
        _to_nested_prefixes(directory)
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot, "do_sample": False}, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
        "min_pixels": min_pixels, "max_pixels": max_pixels, "patch_size": 14, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "resample": 3,
    }, indent=2))
    (directory / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "Qwen2VLVideoProcessor", "processor_class": "Qwen2VLProcessor",
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2, "min_frames": 4, "max_frames": 768, "fps": 2.0,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True, "resample": 3,
    }, indent=2))
    return directory


def _token_ids(tok: Any) -> dict[str, int]:
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return ids


def tiny_qwen2_vl(directory: str | Path, seed: int = 0, min_pixels: int = 28 * 28 * 4,
                  max_pixels: int = 28 * 28 * 64, tie_word_embeddings: bool = False,
                  layout: str = "transformers") -> Path:
    """A tiny ``Qwen2VLForConditionalGeneration`` checkpoint (see the module doc).

    ``layout``: ``"transformers"`` (what transformers 5 saves: nested ``text_config``,
    ``model.*`` / ``visual.*`` / ``lm_head.*``), ``"released"`` (the hub repositories: flat
    config with ``rope_scaling.type = "mrope"``, two shards), ``"nested-prefixes"``
    (transformers 4.52-4.57 names: ``model.language_model.*``, ``model.visual.*``).
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(directory)
    cfg = Qwen2VLConfig(
        vision_config=dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, hidden_size=64, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        text_config=_text_config(tie_word_embeddings=tie_word_embeddings),
        tie_word_embeddings=tie_word_embeddings,
        **_token_ids(tok),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    _randomize(model, seed)
    return _finish(directory, model, tok, min_pixels, max_pixels, layout)


def tiny_qwen2_5_vl(directory: str | Path, seed: int = 0, min_pixels: int = 28 * 28 * 4,
                    max_pixels: int = 28 * 28 * 64, window_size: int = 56, tie_word_embeddings: bool = False,
                    layout: str = "transformers") -> Path:
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` checkpoint: window attention in block 0,
    full attention in block 1 (``fullatt_block_indexes=[1]``), SwiGLU MLPs, RMSNorm."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(directory)
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           window_size=window_size, fullatt_block_indexes=[1], tokens_per_second=2,
                           hidden_act="silu"),
        text_config=_text_config(tie_word_embeddings=tie_word_embeddings),
        tie_word_embeddings=tie_word_embeddings,
        **_token_ids(tok),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    _randomize(model, seed)
    return _finish(directory, model, tok, min_pixels, max_pixels, layout)


def _to_released_layout(directory: Path) -> None:
    """What the hub repositories hold (written by transformers 4.4x): a flat config.json (text
    keys at the top level, ``rope_scaling: {"type": "mrope", "mrope_section": [...]}``,
    ``vision_config`` with ``in_chans``), weights in two shards with an index."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((directory / "config.json").read_text())
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {k: v for k, v in text.items() if k not in ("model_type", "layer_types", "dtype")}
    flat.update({k: v for k, v in cfg.items() if k != "dtype"})
    flat["rope_theta"] = rope["rope_theta"]
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["torch_dtype"] = "float32"
    flat["transformers_version"] = "4.45.0"
    vc = dict(flat["vision_config"])
    vc.pop("rope_parameters", None)
    vc["in_chans"] = vc.pop("in_channels")
    vc["spatial_patch_size"] = vc["patch_size"]
    flat["vision_config"] = vc
    (directory / "config.json").write_text(json.dumps(flat, indent=2))
    sd = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": [n for n in names if not n.startswith("visual.")],
              "model-00002-of-00002.safetensors": [n for n in names if n.startswith("visual.")]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: sd[k].contiguous() for k in keys}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())}, "weight_map": weight_map},
        indent=2))


def _to_nested_prefixes(directory: Path) -> None:
    """The tensor names transformers 4.52-4.57 wrote: ``model.language_model.*``, ``model.visual.*``."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(directory / "model.safetensors"))
    out = {}
    for k, v in sd.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model."):
            k = "model.language_model." + k[len("model."):]
        out[k] = v
    save_file(out, str(directory / "model.safetensors"), metadata={"format": "pt"})


# -- Qwen-VL-Chat ------------------------------------------------------------------------------
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode form of bytes, inverted."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def write_qwen_tiktoken(directory: str | Path, merges: int = 400) -> Path:
    """A small ``qwen.tiktoken``: the 256 bytes, then the first ``merges`` merges of vlkit's
    test BPE (trained on :data:`vlkit.testing.tokenizer.CORPUS`)."""
    from vlkit.testing.tokenizer import make_tokenizer
    from vlkit_plugin_qwen.qwenvl_tokenizer import VOCAB_FILE, write_ranks

    model = json.loads(make_tokenizer().backend_tokenizer.to_str())["model"]
    dec = _byte_decoder()
    tokens = [bytes([b]) for b in range(256)]
    seen = set(tokens)
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        tok = bytes(dec[c] for c in a + b)
        if tok not in seen:
            seen.add(tok)
            tokens.append(tok)
        if len(tokens) >= 256 + merges:
            break
    path = Path(directory) / VOCAB_FILE
    write_ranks(path, tokens)
    return path


def _qwen2_to_qwen_v1(sd: dict[str, Any], layers: int) -> dict[str, Any]:
    """transformers' Qwen2 names -> Qwen (v1)'s ``transformer.*`` (c_attn = [q; k; v])."""
    import torch

    out = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(layers):
        s, d = f"model.layers.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            out[d + f"attn.c_attn.{kind}"] = torch.cat([sd[s + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
        out[d + "attn.c_proj.weight"] = sd[s + "self_attn.o_proj.weight"]
        out[d + "ln_1.weight"] = sd[s + "input_layernorm.weight"]
        out[d + "ln_2.weight"] = sd[s + "post_attention_layernorm.weight"]
        out[d + "mlp.w1.weight"] = sd[s + "mlp.up_proj.weight"]
        out[d + "mlp.w2.weight"] = sd[s + "mlp.gate_proj.weight"]
        out[d + "mlp.c_proj.weight"] = sd[s + "mlp.down_proj.weight"]
    return out


def tiny_qwen_vl_chat(directory: str | Path, seed: int = 0, image_size: int = 56, hidden_size: int = 128) -> Path:
    """A tiny Qwen-VL-Chat (``QWenLMHeadModel``) checkpoint in the original layout.

    The language model is a random transformers ``Qwen2ForCausalLM`` (hidden 128, 2 layers,
    4 heads of 32) converted to Qwen (v1) names; that twin is saved next to the checkpoint as
    ``<name>-qwen2`` (the reference of the tests). The vision side is random: ViT width 32,
    1 block, 2 heads, patch 14, ``image_size`` px, a 256-entry position table (bicubically
    resized to the patch grid), a 256-query resampler with ``hidden_size // 128`` heads.
    Files: ``config.json`` (with ``visual``), ``model.safetensors``, ``qwen.tiktoken``,
    ``generation_config.json``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from vlkit_plugin_qwen.qwenvl_tokenizer import SPECIAL_TOKENS, QwenTiktokenTokenizer
    from vlkit_plugin_qwen.qwenvl_vision import QwenVLVisual

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_qwen_tiktoken(directory)
    tok = QwenTiktokenTokenizer(directory / "qwen.tiktoken")
    vocab = 1024
    assert tok.vocab_size <= vocab, (tok.vocab_size, len(SPECIAL_TOKENS))
    heads, layers, inter = 4, 2, 128
    twin = Qwen2Config(hidden_size=hidden_size, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                       max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
                       tie_word_embeddings=False, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    lm = Qwen2ForCausalLM(twin).eval()
    _randomize(lm, seed)
    twin_dir = directory.parent / f"{directory.name}-qwen2"
    lm.save_pretrained(str(twin_dir))
    visual_cfg = {"heads": 2, "image_size": image_size, "image_start_id": tok.special_tokens["<img>"], "layers": 1,
                  "mlp_ratio": 2.0, "output_dim": hidden_size, "patch_size": 14, "width": 32}
    torch.manual_seed(seed + 1)
    visual = QwenVLVisual(visual_cfg)
    _randomize(visual, seed + 1)
    sd = {k: v.contiguous() for k, v in _qwen2_to_qwen_v1(lm.state_dict(), layers).items()}
    sd.update({"transformer.visual." + k: v.detach().clone().contiguous() for k, v in visual.state_dict().items()})
    save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["QWenLMHeadModel"], "model_type": "qwen", "hidden_size": hidden_size,
        "intermediate_size": 2 * inter, "kv_channels": hidden_size // heads, "num_attention_heads": heads,
        "num_hidden_layers": layers, "layer_norm_epsilon": 1e-6, "max_position_embeddings": 8192,
        "seq_length": 2048, "rotary_emb_base": 10000, "rotary_pct": 1.0, "no_bias": True,
        "scale_attn_weights": True, "tie_word_embeddings": False, "tokenizer_type": "QWenTokenizer",
        "use_dynamic_ntk": True, "use_logn_attn": True, "use_flash_attn": False, "vocab_size": vocab,
        "visual": visual_cfg, "torch_dtype": "float32", "transformers_version": "4.31.0",
    }
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.eos_token_id, "do_sample": False,
         "max_window_size": 6144}, indent=2))
    return directory
