"""Tiny random-weight DeepSeek-VL checkpoints in their real on-disk layouts.

* :func:`tiny_deepseek_vl` — ``DeepseekVLForConditionalGeneration`` written by transformers'
  ``save_pretrained`` with its processor (``DeepseekVLProcessor``: image processor, tokenizer,
  chat template, ``num_image_tokens``);
* :func:`tiny_deepseek_vl_hybrid` — ``DeepseekVLHybridForConditionalGeneration`` likewise;
* :func:`tiny_deepseek_vl_original` — ``MultiModalityCausalLM`` (``hybrid=False``: 1.3b with a
  SigLIP ``CLIPVisionTower``; ``hybrid=True``: 7b with a ``HybridVisionTower``), written from
  the *same weights* as the transformers checkpoint of the same ``seed``: ``config.json`` with
  ``vision_config {cls, params}`` / ``aligner_config {cls, params}`` / ``language_config``,
  ``pytorch_model.bin`` (7b: sharded with an index, as released), ``preprocessor_config.json``
  (``VLMImageProcessor``), ``processor_config.json`` (``VLChatProcessor``) and the tokenizer.
  The towers keep their ``model_name`` (``siglip_large_patch16_384``, ``sam_b_downsample``)
  and override the table's sizes with ``params`` keys of the same names (``width``,
  ``layers``, ``heads``, ``patch_size``, ``mlp_ratio``, SAM's ``global_attn_indexes``,
  ``downsample_channels``, ``prompt_embed_dim``). Tensors the original stores but never uses
  (SigLIP's ``attn_pool``, the hybrid's ``high_layer_norm``/``low_layer_norm``) are written too.

Sizes: LLaMA hidden 64, 2 layers, vocabulary 1000. 1.3b: SigLIP 32 px, patch 8, width 32
(16 image tokens). 7b: SAM 128 px, patch 16, width 32, blocks [global, windowed], neck 16
channels, downsamples 32/64; SigLIP 48 px, patch 2, width 64; 576 image tokens, like the real
one, because the original resizes SAM's features to 96 x 96 whatever its size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image_placeholder>"
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
HALF = [0.5, 0.5, 0.5]

# The chat template transformers' DeepSeek-VL checkpoints carry (written for this plugin after
# the behaviour of the one in deepseek-community/deepseek-vl-*-chat): the system prompt always,
# "User: " / "Assistant: " (no space after an empty final assistant turn), "<image_placeholder>"
# per image part, the first text part left-stripped and the last right-stripped, a space between
# two adjacent text parts, "\n\n" after a user turn and the end-of-sentence token after others
# (not after the last message unless a generation prompt follows), then "Assistant:".
HF_CHAT_TEMPLATE = (
    "{%- set seps = ['\\n\\n', '" + EOS + "'] -%}"
    "{{- '" + SYSTEM_PROMPT + "\\n\\n' -}}"
    "{%- for message in messages -%}"
    "{%- set role = message['role'] | lower -%}"
    "{%- if role == 'user' -%}{{- 'User: ' -}}"
    "{%- elif role == 'assistant' -%}{{- 'Assistant:' -}}"
    "{%- if not (loop.last and not add_generation_prompt and message['content'][0]['type'] == 'text'"
    " and message['content'][0]['text'] == '') -%}{{- ' ' -}}{%- endif -%}"
    "{%- else -%}{{- message['role'] | capitalize -}}{{- ': ' -}}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '" + IMAGE_TOKEN + "' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{%- set t = part['text'] -%}"
    "{%- if loop.first -%}{%- set t = t.lstrip() -%}{%- endif -%}"
    "{%- if loop.last -%}{%- set t = t.rstrip() -%}{%- endif -%}"
    "{%- if not loop.first and message['content'][loop.index0 - 1]['type'] == 'text' -%}{{- ' ' -}}{%- endif -%}"
    "{{- t -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if not loop.last or add_generation_prompt -%}"
    "{{- seps[0] if role == 'user' else seps[1] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False, model_type="llama")
SIGLIP_13B = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
SIGLIP_7B = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=48,
                 patch_size=2)
SAM_7B = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=128,
              patch_size=16, mlp_dim=128, window_size=14, global_attn_indexes=[0])


def make_deepseek_tokenizer(chat_template: str | None = None) -> Any:
    """A real fast tokenizer with DeepSeek's BOS/EOS and ``<image_placeholder>`` as a special token."""
    from vlkit.testing.tokenizer import make_tokenizer

    return make_tokenizer([IMAGE_TOKEN], 1000, bos=BOS, eos=EOS, unk=None, pad=None, add_bos=True,
                          chat_template=chat_template)


def _randomize(model: Any, seed: int) -> None:
    """Weights with a useful spread (transformers' SAM init is ~1e-10, its alpha 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = max(1, p[0].numel())
                std = 0.5 if ("pos" in name or "embed_tokens" in name) else fan_in ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif name.endswith("alpha"):
                p.fill_(0.7)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _vision_dict(d: dict[str, Any]) -> dict[str, Any]:
    return dict(model_type="siglip_vision_model", hidden_act="gelu", layer_norm_eps=1e-6, vision_use_head=False, **d)


def _write_hf(model: Any, processor: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    from vlkit.testing.tokenizer import save_tokenizer

    save_tokenizer(processor.tokenizer, directory)
    cfg = json.loads((directory / "tokenizer_config.json").read_text())
    cfg["extra_special_tokens"] = {"image_token": IMAGE_TOKEN}
    cfg["pad_token"] = EOS  # as transformers' conversion sets it
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (directory / "chat_template.jinja").write_text(HF_CHAT_TEMPLATE)
    return directory


def _hf_tokenizer() -> Any:
    tok = make_deepseek_tokenizer(HF_CHAT_TEMPLATE)
    tok.image_token = IMAGE_TOKEN
    return tok


def build_hf_model(hybrid: bool, seed: int = 0) -> Any:
    """The tiny transformers model (random weights, fp32, eval)."""
    import torch
    from transformers import (
        DeepseekVLConfig,
        DeepseekVLForConditionalGeneration,
        DeepseekVLHybridConfig,
        DeepseekVLHybridForConditionalGeneration,
    )

    tok = make_deepseek_tokenizer()
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    text = dict(TEXT, vocab_size=1000, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    if hybrid:
        cfg = DeepseekVLHybridConfig(
            text_config=text, vision_config=_vision_dict(SIGLIP_7B),
            high_res_vision_config=dict(model_type="sam_vision_model", layer_norm_eps=1e-6, hidden_act="gelu", **SAM_7B),
            image_token_id=image_id, tie_word_embeddings=False,
        )
        model = DeepseekVLHybridForConditionalGeneration(cfg)
    else:
        cfg = DeepseekVLConfig(text_config=text, vision_config=_vision_dict(SIGLIP_13B), image_token_id=image_id,
                               tie_word_embeddings=False)
        model = DeepseekVLForConditionalGeneration(cfg)
    _randomize(model, seed)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.eos_token_id
    return model.eval()


def _hf_processor(hybrid: bool, num_tokens: int) -> Any:
    import transformers

    tok = _hf_tokenizer()
    if hybrid:
        ip = transformers.DeepseekVLHybridImageProcessorPil(
            size={"height": SIGLIP_7B["image_size"], "width": SIGLIP_7B["image_size"]},
            high_res_size={"height": SAM_7B["image_size"], "width": SAM_7B["image_size"]},
            image_mean=HALF, image_std=HALF, high_res_image_mean=CLIP_MEAN, high_res_image_std=CLIP_STD,
            resample=2,  # bilinear, as transformers' conversion of the 7b sets it
        )
        return transformers.DeepseekVLHybridProcessor(ip, tok, chat_template=HF_CHAT_TEMPLATE, num_image_tokens=num_tokens)
    ip = transformers.DeepseekVLImageProcessorPil(
        size={"height": SIGLIP_13B["image_size"], "width": SIGLIP_13B["image_size"]}, image_mean=HALF, image_std=HALF,
    )
    return transformers.DeepseekVLProcessor(ip, tok, chat_template=HF_CHAT_TEMPLATE, num_image_tokens=num_tokens)


def tiny_deepseek_vl(directory: str | Path, seed: int = 0, **_: Any) -> Path:
    """``DeepseekVLForConditionalGeneration`` (1.3b layout) in ``directory``."""
    n = (SIGLIP_13B["image_size"] // SIGLIP_13B["patch_size"]) ** 2
    return _write_hf(build_hf_model(False, seed), _hf_processor(False, n), Path(directory))


def tiny_deepseek_vl_hybrid(directory: str | Path, seed: int = 0, **_: Any) -> Path:
    """``DeepseekVLHybridForConditionalGeneration`` (7b layout) in ``directory``."""
    return _write_hf(build_hf_model(True, seed), _hf_processor(True, 576), Path(directory))


# --------------------------------------------------------------------------------------------
# the original layout, from the same weights


def _hf_to_original_names(state: dict[str, Any], hybrid: bool) -> dict[str, Any]:
    """transformers' tensor names -> ``MultiModalityCausalLM``'s (SigLIP q/k/v fused to qkv)."""
    import torch

    siglip = "vision_model.vision_tower_low.vision_tower." if hybrid else "vision_model.vision_tower."
    sam = "vision_model.vision_tower_high.vision_tower."
    neck = {"conv1": "0", "layer_norm1": "1", "conv2": "2", "layer_norm2": "3"}
    out: dict[str, Any] = {}
    qkv: dict[str, dict[str, Any]] = {}
    for name, t in state.items():
        n = re.sub(r"^model\.", "", name)
        if n.startswith("language_model."):
            out["language_model.model." + n[len("language_model."):]] = t
        elif name == "lm_head.weight":
            out["language_model.lm_head.weight"] = t
        elif m := re.match(r"vision_model\.(?:vision_model\.)?(.*)$", n):
            r = m.group(1)
            if r == "embeddings.position_embedding.weight":
                out[siglip + "pos_embed"] = t.unsqueeze(0)
            elif r.startswith("embeddings.patch_embedding."):
                out[siglip + "patch_embed.proj." + r.rsplit(".", 1)[1]] = t
            elif mm := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", r):
                qkv.setdefault(f"{siglip}blocks.{mm.group(1)}.attn.qkv.{mm.group(3)}", {})[mm.group(2)] = t
            elif mm := re.match(r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(.*)$", r):
                out[f"{siglip}blocks.{mm.group(1)}.attn.proj.{mm.group(2)}"] = t
            elif mm := re.match(r"encoder\.layers\.(\d+)\.layer_norm(\d)\.(.*)$", r):
                out[f"{siglip}blocks.{mm.group(1)}.norm{mm.group(2)}.{mm.group(3)}"] = t
            elif mm := re.match(r"encoder\.layers\.(\d+)\.mlp\.(.*)$", r):
                out[f"{siglip}blocks.{mm.group(1)}.mlp.{mm.group(2)}"] = t
            elif r.startswith("post_layernorm."):
                out[siglip + "norm." + r.rsplit(".", 1)[1]] = t
            else:
                raise KeyError(f"unexpected SigLIP tensor {name}")
        elif m := re.match(r"high_res_vision_model\.(?:vision_encoder\.)?(.*)$", n):
            r = m.group(1)
            r = r.replace("patch_embed.projection.", "patch_embed.proj.")
            r = re.sub(r"^layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.norm\2.", r)
            r = re.sub(r"^layers\.", "blocks.", r)
            if mm := re.match(r"neck\.(conv1|layer_norm1|conv2|layer_norm2)\.(.*)$", r):
                r = f"neck.{neck[mm.group(1)]}.{mm.group(2)}"
            out[sam + r] = t
        elif mm := re.match(r"high_res_vision_neck\.(conv1|layer_norm1|conv2|layer_norm2)\.(.*)$", n):
            out[f"{sam}neck_hd.{neck[mm.group(1)]}.{mm.group(2)}"] = t
        elif mm := re.match(r"high_res_vision_proj\.conv(\d)\.weight$", n):
            out[f"{sam}downsamples.{int(mm.group(1)) - 1}.weight"] = t
        elif n == "high_res_vision_alpha":
            out[sam + "hd_alpha_downsamples"] = t
        elif mm := re.match(r"aligner\.(\w+)\.(weight|bias)$", n):
            names = {"linear1": "layers.0", "linear2": "layers.2", "vision_proj": "low_up_proj",
                     "high_res_vision_proj": "high_up_proj", "proj": "layers.1"}
            out[f"aligner.{names[mm.group(1)]}.{mm.group(2)}"] = t
        else:
            raise KeyError(f"unexpected tensor {name}")
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    # stored by the original, never used
    g = torch.Generator().manual_seed(1234)
    w = SIGLIP_7B["hidden_size"] if hybrid else SIGLIP_13B["hidden_size"]
    for k, shape in {"attn_pool.latent": (1, 1, w), "attn_pool.q.weight": (w, w), "attn_pool.q.bias": (w,),
                     "attn_pool.kv.weight": (2 * w, w), "attn_pool.kv.bias": (2 * w,), "attn_pool.proj.weight": (w, w),
                     "attn_pool.proj.bias": (w,), "attn_pool.norm.weight": (w,), "attn_pool.norm.bias": (w,),
                     "attn_pool.mlp.fc1.weight": (4 * w, w), "attn_pool.mlp.fc1.bias": (4 * w,),
                     "attn_pool.mlp.fc2.weight": (w, 4 * w), "attn_pool.mlp.fc2.bias": (w,)}.items():
        out[siglip + k] = torch.randn(shape, generator=g)
    if hybrid:
        for k in ("high_layer_norm", "low_layer_norm"):
            out[f"vision_model.{k}.weight"] = torch.ones(w)
            out[f"vision_model.{k}.bias"] = torch.zeros(w)
    return {k: v.contiguous().clone() for k, v in out.items()}


def original_config(hybrid: bool, vocab_size: int = 1000, bos_id: int = 1, eos_id: int = 2) -> dict[str, Any]:
    lm = dict(TEXT, vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, architectures=["LlamaForCausalLM"],
              torch_dtype="float32", rope_theta=10000.0, hidden_act="silu")
    lm.pop("tie_word_embeddings")  # the released language_config leaves it to LlamaConfig's default (False)
    sig = SIGLIP_7B if hybrid else SIGLIP_13B
    siglip_params = {
        "model_name": "siglip_large_patch16_384", "image_size": sig["image_size"], "select_feature": "same",
        "select_layer": -1, "ckpt_path": "", "width": sig["hidden_size"], "layers": sig["num_hidden_layers"],
        "heads": sig["num_attention_heads"], "patch_size": sig["patch_size"],
        "mlp_ratio": sig["intermediate_size"] / sig["hidden_size"],
    }
    if hybrid:
        vision = {"cls": "HybridVisionTower", "model_type": "vision", "params": {
            "concat_type": "tuple", "freeze_high": True, "freeze_low": True,
            "high_res_cfg": {
                "model_name": "sam_b_downsample", "image_size": SAM_7B["image_size"], "select_feature": "same",
                "select_layer": -1, "ckpt_path": "", "output_dim": sig["hidden_size"],
                "pixel_mean": CLIP_MEAN, "pixel_std": CLIP_STD,
                "width": SAM_7B["hidden_size"], "layers": SAM_7B["num_hidden_layers"],
                "heads": SAM_7B["num_attention_heads"], "patch_size": SAM_7B["patch_size"],
                "global_attn_indexes": SAM_7B["global_attn_indexes"],
                "downsample_channels": [SAM_7B["output_channels"] * 2, SAM_7B["output_channels"] * 4],
                "prompt_embed_dim": SAM_7B["output_channels"],
            },
            "low_res_cfg": {**siglip_params, "output_dim": sig["hidden_size"], "pixel_mean": HALF, "pixel_std": HALF},
        }}
        aligner = {"cls": "MlpProjector", "model_type": "aligner", "params": {
            "depth": 2, "input_dim": sig["hidden_size"], "n_embed": TEXT["hidden_size"],
            "projector_type": "low_high_hybrid_split_mlp_gelu"}}
    else:
        vision = {"cls": "CLIPVisionTower", "model_type": "vision", "params": siglip_params}
        aligner = {"cls": "MlpProjector", "model_type": "aligner", "params": {
            "depth": 2, "input_dim": sig["hidden_size"], "n_embed": TEXT["hidden_size"], "projector_type": "mlp_gelu"}}
    return {
        "architectures": ["MultiModalityCausalLM"], "model_type": "multi_modality", "torch_dtype": "float32",
        "vision_config": vision, "aligner_config": aligner, "language_config": lm,
        "transformers_version": "4.38.2",
    }


def hf_twin_path(original_dir: str | Path) -> Path:
    """Where :func:`tiny_deepseek_vl_original` writes the transformers twin (same weights)."""
    p = Path(original_dir)
    return p.parent / f"{p.name}-hf"


def tiny_deepseek_vl_original(
    directory: str | Path, hybrid: bool = False, seed: int = 0, twin: bool = True, **_: Any
) -> Path:
    """``MultiModalityCausalLM`` with the weights of the transformers checkpoint of ``seed``;
    with ``twin`` that transformers checkpoint is written to :func:`hf_twin_path` too."""
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model = build_hf_model(hybrid, seed)
    if twin:
        n = 576 if hybrid else (SIGLIP_13B["image_size"] // SIGLIP_13B["patch_size"]) ** 2
        _write_hf(model, _hf_processor(hybrid, n), hf_twin_path(d))
    state = _hf_to_original_names(model.state_dict(), hybrid)
    tok = make_deepseek_tokenizer()
    from vlkit.testing.tokenizer import save_tokenizer

    save_tokenizer(tok, d)
    cfg = original_config(hybrid, 1000, tok.bos_token_id, tok.eos_token_id)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if hybrid:  # sharded .bin with an index, as deepseek-vl-7b-chat
        names = sorted(state)
        shards = {"pytorch_model-00001-of-00002.bin": [n for n in names if n.startswith("language_model.")],
                  "pytorch_model-00002-of-00002.bin": [n for n in names if not n.startswith("language_model.")]}
        weight_map = {}
        for file, keys in shards.items():
            torch.save({k: state[k] for k in keys}, str(d / file))
            weight_map.update({k: file for k in keys})
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": weight_map}
        (d / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    else:
        torch.save(state, str(d / "pytorch_model.bin"))
    size = SAM_7B["image_size"] if hybrid else SIGLIP_13B["image_size"]
    pre = {
        "image_processor_type": "VLMImageProcessor", "processor_class": "VLChatProcessor", "image_size": size,
        "min_size": 14, "rescale_factor": 1 / 255, "background_color": [127, 127, 127],
        # 7b: the towers normalise (HybridVisionTower); 1.3b: the processor does
        "image_mean": CLIP_MEAN if hybrid else HALF, "image_std": CLIP_STD if hybrid else HALF,
        "do_normalize": not hybrid,
    }
    (d / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    n = 576 if hybrid else (SIGLIP_13B["image_size"] // SIGLIP_13B["patch_size"]) ** 2
    proc = {"processor_class": "VLChatProcessor", "image_tag": IMAGE_TOKEN, "num_image_tokens": n,
            "add_special_token": False, "sft_format": "deepseek", "mask_prompt": True, "ignore_id": -100}
    (d / "processor_config.json").write_text(json.dumps(proc, indent=2) + "\n")
    gen = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return d
