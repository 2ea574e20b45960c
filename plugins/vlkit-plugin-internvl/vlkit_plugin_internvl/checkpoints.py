"""Tiny random-weight InternVL checkpoints in the real on-disk layouts.

* :func:`tiny_internvl_hf` — transformers' ``InternVLForConditionalGeneration``, written by
  ``save_pretrained`` (config, safetensors, ``preprocessor_config.json`` for
  ``GotOcr2ImageProcessor`` with ``crop_to_patches``, tokenizer, chat template,
  ``generation_config.json``); language model Qwen2 or LLaMA.
* :func:`tiny_internvl_original` — the same weights in the original ``InternVLChatModel`` layout
  (``vision_model.*`` with a fused ``attn.qkv``, ``mlp1.{0,1,3}``, ``language_model.*``), with a
  Qwen2 language model (as InternVL2-1B) or an InternLM2 one (as InternVL2-2B/8B: the LLaMA
  weights repacked, ``wqkv`` grouped per KV head) and the config keys of the released
  checkpoints (``template``, ``force_image_size``, ``ps_version``, ``max_dynamic_patch``...).

The tokenizer is a byte-level BPE (every text encodes) carrying InternVL's special tokens;
the InternLM2 variant adds BOS like InternLM2's tokenizer. ``tokenizer="sentencepiece"`` gives
the InternLM2 variant the released files instead (:func:`write_internlm2_tokenizer`): a
sentencepiece ``tokenizer.model`` and a ``tokenizer_config.json`` whose ``auto_map`` names the
checkpoint's own ``InternLM2Tokenizer``, as OpenGVLab/InternVL2-2B and -8B ship.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

SPECIALS = (
    "<unk>", "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
    "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<video>", "<quad>", "</quad>", "<ref>", "</ref>",
    "<box>", "</box>",
)
VOCAB_SIZE = 288  # 256 bytes + specials, padded


def write_tokenizer(path: str | Path, bos: bool) -> Any:
    """A byte-level BPE tokenizer (no merges) with InternVL's special tokens; ``bos`` adds ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for tok in SPECIALS:
        vocab[tok] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(list(SPECIALS))
    if bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>" if bos else "<|im_end|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": "<img>", "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>",
        },
    )
    fast.save_pretrained(str(path))
    return fast


#: InternLM2's chat tokens (sentencepiece user-defined pieces, in its tokenizer.model) and the ones
#: InternVL adds after the sentencepiece vocabulary (InternVL2-2B: ids 92544-92552).
INTERNLM2_PIECES = ("<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>")
INTERNVL_ADDED = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
SP_VOCAB_SIZE = 400  # the tiny model's vocabulary with the sentencepiece tokenizer (pieces + added)
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. What is in the image? A cat sits on a red mat.",
    "Describe the picture in detail. There are two people walking along the beach at sunset.",
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。",
    "user assistant system Please answer the question: how many apples are on the table?",
    "Frame1: Frame2: video image picture colour color blue green yellow numbers 0123456789",
)


def write_internlm2_tokenizer(path: str | Path, add_dummy_prefix: bool = False) -> dict[str, int]:
    """InternLM2's tokenizer files, trained tiny: ``tokenizer.model`` (sentencepiece BPE with byte
    fallback, InternLM2's chat tokens as user-defined pieces), ``tokenizer_config.json`` with the
    released keys (``auto_map`` to ``tokenization_internlm2.InternLM2Tokenizer``,
    ``added_tokens_decoder`` holding InternVL's tokens after the sentencepiece vocabulary) and
    ``special_tokens_map.json``. Returns the added tokens' ids."""
    import io

    import sentencepiece as spm

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    n_pieces = SP_VOCAB_SIZE - len(INTERNVL_ADDED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=model, vocab_size=n_pieces, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=add_dummy_prefix,
        user_defined_symbols=list(INTERNLM2_PIECES), unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",  # InternLM2 keeps "\n" and "\t" (byte pieces here)
        minloglevel=2,
    )
    (path / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    ids = {t: sp.piece_to_id(t) for t in ("<unk>", "<s>", "</s>", *INTERNLM2_PIECES)}
    ids.update({t: n_pieces + i for i, t in enumerate(INTERNVL_ADDED)})

    def added(tok: str) -> dict[str, Any]:
        return {"content": tok, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                "special": True}

    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(i): added(t) for t, i in sorted(ids.items(), key=lambda kv: kv[1])},
        "additional_special_tokens": list(INTERNLM2_PIECES),
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 8192,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": list(INTERNLM2_PIECES), "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "</s>", "unk_token": "<unk>"}, indent=2))
    return ids


def _vision_dims(image_size: int, patch_size: int) -> dict[str, Any]:
    return dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=image_size, patch_size=patch_size, layer_norm_eps=1e-6, hidden_act="gelu",
        norm_type="layer_norm",
    )


def _text_dims(arch: str, eos_token: str, vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
    return dict(
        model_type=arch, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=2048, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=SPECIALS.index("<s>") + 256,
        eos_token_id=SPECIALS.index(eos_token) + 256,
    )


def _randomize(model: Any, seed: int) -> None:
    """Weights large enough that every part (vision included) changes the logits."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if re.search(r"(norm|layernorm|layer_norm)[^.]*\.weight$", name) or name.endswith(("lambda_1", "lambda_2")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


HF_CHAT_TEMPLATE = (Path(__file__).parent / "templates" / "internvl-hf.jinja")


def tiny_internvl_hf(
    directory: str | Path,
    text: str = "qwen2",
    seed: int = 0,
    image_size: int = 56,
    patch_size: int = 14,
    max_patches: int = 6,
    vocab_size: int = VOCAB_SIZE,
) -> Path:
    """transformers' ``InternVLForConditionalGeneration`` with a ``text`` (qwen2 | llama) language model
    (``vocab_size`` rows of embeddings: more than its tokenizer's leave room for another one's)."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = write_tokenizer(directory, bos=(text == "llama"))
    tpt = image_size // patch_size
    cfg = InternVLConfig(
        vision_config=dict(_vision_dims(image_size, patch_size), attention_bias=True, use_qk_norm=False,
                           use_mean_pooling=True, model_type="internvl_vision"),
        text_config=_text_dims(text, tok.eos_token, vocab_size),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=int(tpt * tpt * 0.25),
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).eval()
    _randomize(model, seed)
    model.save_pretrained(str(directory))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = [im_end, tok.eos_token_id] if tok.eos_token_id != im_end else [im_end]
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": tok.pad_token_id}))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "GotOcr2ImageProcessor",
        "crop_to_patches": True, "min_patches": 1, "max_patches": max_patches,
        "size": {"height": image_size, "width": image_size},
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "resample": 3,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }, indent=2))
    (directory / "processor_config.json").write_text(json.dumps({
        "processor_class": "InternVLProcessor", "image_seq_length": int(tpt * tpt * 0.25)}))
    # the template defaults image_marker to <IMG_CONTEXT>, so transformers renders the file as it is
    (directory / "chat_template.jinja").write_text(HF_CHAT_TEMPLATE.read_text())
    return directory


# -- the original layout -------------------------------------------------------------------------
def _hf_state(directory: Path) -> dict[str, Any]:
    """The HF checkpoint's tensors under one naming (``model.language_model.`` etc.)."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    sd: dict[str, Any] = {}
    for f in files:
        sd.update(load_file(str(f)))
    out = {}
    for k, v in sd.items():
        for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                         ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")):
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def _vision_to_original(sd: dict[str, Any], num_layers: int) -> dict[str, Any]:
    import torch

    out = {}
    v = "model.vision_tower."
    out["vision_model.embeddings.class_embedding"] = sd[v + "embeddings.cls_token"]
    out["vision_model.embeddings.patch_embedding.weight"] = sd[v + "embeddings.patch_embeddings.projection.weight"]
    out["vision_model.embeddings.patch_embedding.bias"] = sd[v + "embeddings.patch_embeddings.projection.bias"]
    out["vision_model.embeddings.position_embedding"] = sd[v + "embeddings.position_embeddings"]
    for i in range(num_layers):
        s, d = f"{v}encoder.layer.{i}.", f"vision_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[d + f"attn.qkv.{kind}"] = torch.cat([sd[s + f"attention.{x}_proj.{kind}"] for x in "qkv"])
            out[d + f"attn.proj.{kind}"] = sd[s + f"attention.projection_layer.{kind}"]
            out[d + f"norm1.{kind}"] = sd[s + f"layernorm_before.{kind}"]
            out[d + f"norm2.{kind}"] = sd[s + f"layernorm_after.{kind}"]
            out[d + f"mlp.fc1.{kind}"] = sd[s + f"mlp.fc1.{kind}"]
            out[d + f"mlp.fc2.{kind}"] = sd[s + f"mlp.fc2.{kind}"]
        out[d + "ls1"] = sd[s + "lambda_1"]
        out[d + "ls2"] = sd[s + "lambda_2"]
    p = "model.multi_modal_projector."
    for src, dst in (("layer_norm", "0"), ("linear_1", "1"), ("linear_2", "3")):
        for kind in ("weight", "bias"):
            out[f"mlp1.{dst}.{kind}"] = sd[f"{p}{src}.{kind}"]
    return out


def _llama_to_internlm2(sd: dict[str, Any], tc: dict[str, Any]) -> dict[str, Any]:
    """HF LLaMA names -> InternLM2's, under ``language_model.``; ``wqkv`` = per KV head ``[q × g, k, v]``."""
    import torch

    h, kvh = tc["num_attention_heads"], tc["num_key_value_heads"]
    d = tc.get("head_dim") or tc["hidden_size"] // h
    g = h // kvh
    L = "model.language_model."
    out = {
        "language_model.model.tok_embeddings.weight": sd[L + "embed_tokens.weight"],
        "language_model.model.norm.weight": sd[L + "norm.weight"],
        "language_model.output.weight": sd["lm_head.weight"],
    }
    for i in range(tc["num_hidden_layers"]):
        s, o = f"{L}layers.{i}.", f"language_model.model.layers.{i}."
        q = sd[s + "self_attn.q_proj.weight"].reshape(kvh, g, d, -1)
        k = sd[s + "self_attn.k_proj.weight"].reshape(kvh, 1, d, -1)
        v = sd[s + "self_attn.v_proj.weight"].reshape(kvh, 1, d, -1)
        out[o + "attention.wqkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1]).contiguous()
        out[o + "attention.wo.weight"] = sd[s + "self_attn.o_proj.weight"]
        out[o + "feed_forward.w1.weight"] = sd[s + "mlp.gate_proj.weight"]
        out[o + "feed_forward.w3.weight"] = sd[s + "mlp.up_proj.weight"]
        out[o + "feed_forward.w2.weight"] = sd[s + "mlp.down_proj.weight"]
        out[o + "attention_norm.weight"] = sd[s + "input_layernorm.weight"]
        out[o + "ffn_norm.weight"] = sd[s + "post_attention_layernorm.weight"]
    return out


def _llama_to_phi3(sd: dict[str, Any], tc: dict[str, Any]) -> dict[str, Any]:
    """HF LLaMA names -> Phi-3's fused ``qkv_proj`` ``[q; k; v]`` and ``gate_up_proj`` ``[gate; up]``."""
    import torch

    L = "model.language_model."
    out = {
        "language_model.model.embed_tokens.weight": sd[L + "embed_tokens.weight"],
        "language_model.model.norm.weight": sd[L + "norm.weight"],
        "language_model.lm_head.weight": sd["lm_head.weight"],
    }
    for i in range(tc["num_hidden_layers"]):
        s, o = f"{L}layers.{i}.", f"language_model.model.layers.{i}."
        out[o + "self_attn.qkv_proj.weight"] = torch.cat([sd[s + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[o + "self_attn.o_proj.weight"] = sd[s + "self_attn.o_proj.weight"]
        out[o + "mlp.gate_up_proj.weight"] = torch.cat([sd[s + "mlp.gate_proj.weight"], sd[s + "mlp.up_proj.weight"]])
        out[o + "mlp.down_proj.weight"] = sd[s + "mlp.down_proj.weight"]
        out[o + "input_layernorm.weight"] = sd[s + "input_layernorm.weight"]
        out[o + "post_attention_layernorm.weight"] = sd[s + "post_attention_layernorm.weight"]
    return out


def tiny_internvl_original(
    directory: str | Path,
    llm: str = "qwen2",
    template: str | None = None,
    hf_checkpoint: str | Path | None = None,
    seed: int = 0,
    max_dynamic_patch: int = 6,
    shards: int = 1,
    tokenizer: str = "bpe",
) -> Path:
    """The original ``InternVLChatModel`` layout with a ``llm`` (qwen2 | internlm2 | phi3) language model.

    The weights are those of ``hf_checkpoint`` (a :func:`tiny_internvl_hf` directory, with a
    qwen2 text model for ``llm="qwen2"``, llama for ``"internlm2"`` and ``"phi3"``); one is
    written next to ``directory`` when not given. ``template`` defaults to the released one:
    ``Hermes-2`` for Qwen2 (InternVL2-1B), ``internlm2-chat`` for InternLM2 (InternVL2-2B/8B),
    ``phi3-chat`` for Phi-3 (InternVL2-4B; default RoPE here, where the release uses LongRoPE). ``shards > 1``
    writes ``model-0000i-of-0000n.safetensors`` with an index, as the released checkpoints.
    ``tokenizer="sentencepiece"`` (InternLM2 only) writes InternLM2's released tokenizer files
    (:func:`write_internlm2_tokenizer`) instead of the byte-level BPE.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if llm not in ("qwen2", "internlm2", "phi3"):
        raise ValueError(f"llm must be 'qwen2', 'internlm2' or 'phi3', got {llm!r}")
    if tokenizer not in ("bpe", "sentencepiece") or (tokenizer == "sentencepiece" and llm != "internlm2"):
        raise ValueError(f"tokenizer must be 'bpe' or (with llm='internlm2') 'sentencepiece', got {tokenizer!r}")
    if hf_checkpoint is None:
        hf_checkpoint = tiny_internvl_hf(
            directory.parent / f"{directory.name}-hf", text="qwen2" if llm == "qwen2" else "llama", seed=seed,
            vocab_size=SP_VOCAB_SIZE if tokenizer == "sentencepiece" else VOCAB_SIZE,
        )
    hf_dir = Path(hf_checkpoint)
    hf_cfg = json.loads((hf_dir / "config.json").read_text())
    vc, tc = hf_cfg["vision_config"], dict(hf_cfg["text_config"])
    sd = _hf_state(hf_dir)
    tensors = _vision_to_original(sd, vc["num_hidden_layers"])
    if llm == "qwen2":
        for k, v in sd.items():
            if k.startswith("model.language_model."):
                tensors["language_model.model." + k[len("model.language_model."):]] = v
        tensors["language_model.lm_head.weight"] = sd["lm_head.weight"]
    elif llm == "phi3":
        tensors.update(_llama_to_phi3(sd, tc))
    else:
        tensors.update(_llama_to_internlm2(sd, tc))
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if shards <= 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(tensors)
        wmap = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[s::shards]}
            save_file(part, str(directory / fname), metadata={"format": "pt"})
            wmap.update({n: fname for n in part})
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))

    if tokenizer == "sentencepiece":
        ids = write_internlm2_tokenizer(directory)
        if tc["vocab_size"] < max(ids.values()) + 1:
            raise ValueError(f"{hf_dir}'s vocabulary ({tc['vocab_size']}) is smaller than the tokenizer's")
        tok = SimpleNamespace(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                              convert_tokens_to_ids=ids.__getitem__)
    else:
        tok = write_tokenizer(directory, bos=(llm == "internlm2"))
    rope = tc.get("rope_parameters") or {}
    common = {k: tc[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps")}
    common.update(rope_theta=rope.get("rope_theta", tc.get("rope_theta", 10000.0)), tie_word_embeddings=False,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if llm == "qwen2":
        llm_config = dict(common, architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                          use_sliding_window=False, rope_scaling=None)
        template = template or "Hermes-2"
    elif llm == "phi3":
        llm_config = dict(common, architectures=["Phi3ForCausalLM"], model_type="phi3", hidden_act="silu",
                          original_max_position_embeddings=common["max_position_embeddings"], rope_scaling=None,
                          sliding_window=None)
        template = template or "phi3-chat"
    else:
        llm_config = dict(common, architectures=["InternLM2ForCausalLM"], model_type="internlm2", hidden_act="silu",
                          bias=False, rope_scaling=None,
                          auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                                    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"})
        template = template or "internlm2-chat"
    vision_config = {
        "architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
        "hidden_size": vc["hidden_size"], "num_hidden_layers": vc["num_hidden_layers"],
        "num_attention_heads": vc["num_attention_heads"], "intermediate_size": vc["intermediate_size"],
        "image_size": _first(vc["image_size"]), "patch_size": _first(vc["patch_size"]),
        "qkv_bias": True, "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": vc["layer_norm_eps"],
        "hidden_act": "gelu", "use_flash_attn": False, "dropout": 0.0, "drop_path_rate": 0.0,
        "initializer_factor": 1.0, "num_channels": 3,
    }
    config = {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"},
        "model_type": "internvl_chat",
        "vision_config": vision_config,
        "llm_config": llm_config,
        "downsample_ratio": hf_cfg.get("downsample_ratio", 0.5),
        "dynamic_image_size": True,
        "force_image_size": _first(vc["image_size"]),
        "max_dynamic_patch": max_dynamic_patch,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": -1,
        "template": template,
        "use_thumbnail": True,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "pad2square": False,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = sorted({im_end, tok.eos_token_id})  # InternLM2: <|im_end|> and </s>; Qwen2: <|im_end|> is its EOS
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    return directory


def _first(v: Any) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)
