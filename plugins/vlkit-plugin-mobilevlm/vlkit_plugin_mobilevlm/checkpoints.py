"""Tiny random-weight MobileVLM checkpoints in the released on-disk format.

:func:`tiny_mobilevlm` writes what mtgv/MobileVLM* ship: ``config.json``
(``architectures: ["MobileLlamaForCausalLM"]``, ``model_type: "mobilevlm"``, the ``mm_*``
fields, ``vision_tower_type: "clip"``), ``pytorch_model.bin`` (or safetensors) holding the
LLaMA (``model.*``, ``lm_head.*``), the projector (``model.mm_projector.*``) and the CLIP tower
(``model.vision_tower.vision_tower.vision_model.*``), a LLaMA-style tokenizer without an image
token, ``generation_config.json``; and, beside it, the standalone CLIP tower that
``mm_vision_tower`` names by absolute path (config, weights, ``preprocessor_config.json``).

Versions: ``"v1"`` (``ldpnet``, 84 px / patch 14: a 6x6 grid -> 9 tokens) and ``"v2"``
(``ldpnetv2``, 112 px / patch 7: a 16x16 grid pooled to the fixed 12x12 -> 144 tokens; the
original hard-codes 12x12, so the tiny grid is larger than that to make the pool average).
V2 fine-tuned its tower: the standalone tower holds *other* weights (the pre-fine-tuning
ones), to prove the checkpoint's copy is used. V1 froze its tower: both copies are equal.

``size="w1"``: BENCH.md's W1 dimensions (CLIP 256/1024/4 layers/4 heads, 224 px, patch 14 ->
16x16 -> 64 tokens with ldpnet; LLaMA 512/1408/8 layers/8 heads/4 KV heads, vocab 32000).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4},
        "text": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        "vocab_size": 1000,
        "v1": {"image_size": 84, "patch_size": 14},
        "v2": {"image_size": 112, "patch_size": 7},
    },
    "w1": {
        "vision": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4},
        "text": {
            "hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8,
            "num_key_value_heads": 4,
        },
        "vocab_size": 32000,
        "v1": {"image_size": 224, "patch_size": 14},
        "v2": {"image_size": 224, "patch_size": 14},
    },
}
PROJECTOR = {"v1": "ldpnet", "v2": "ldpnetv2"}


def clip_tower_path(model_dir: str | Path) -> Path:
    """Where :func:`tiny_mobilevlm` writes the standalone CLIP tower named by ``mm_vision_tower``."""
    p = Path(model_dir)
    return p.parent / f"{p.name}-clip"


def make_tokenizer(vocab_size: int) -> Any:
    """A LLaMA-like tokenizer (``<unk> <s> </s>``, BOS added, pad = ``<unk>``), no image token."""
    from vlkit.testing.tokenizer import make_tokenizer as core_make_tokenizer

    tok = core_make_tokenizer((), vocab_size, bos="<s>", eos="</s>", unk="<unk>", pad="<unk>", add_bos=True)
    tok.padding_side = "left"
    return tok


def _vision_config(size: str, version: str) -> Any:
    from transformers import CLIPVisionConfig

    s = SIZES[size]
    return CLIPVisionConfig(**s["vision"], **s[version], projection_dim=s["vision"]["hidden_size"])


def tiny_mobilevlm(
    directory: str | Path, *, version: str = "v2", seed: int = 0, size: str = "tiny", fmt: str = "bin",
    shards: int = 1, dtype: str = "float32", tower_in_checkpoint: bool = True, text_init_std: float = 0.2,
) -> Path:
    """Write a tiny ``MobileLlamaForCausalLM`` checkpoint; returns its directory.

    :param version: ``"v1"`` (``ldpnet``) or ``"v2"`` (``ldpnetv2``).
    :param fmt: ``"bin"`` (``pytorch_model.bin``, as released) or ``"safetensors"``; ``shards > 1``
        writes an index.
    :param tower_in_checkpoint: store the tower's weights in the checkpoint too (as released).
    """
    import torch
    from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from vlkit.testing.checkpoint import random_state_dict
    from vlkit_plugin_mobilevlm.modeling import build_projector

    if version not in PROJECTOR:
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    s = SIZES[size]
    tok = make_tokenizer(s["vocab_size"])
    vocab = s["vocab_size"]
    vision = _vision_config(size, version)
    text = LlamaConfig(
        **s["text"], vocab_size=vocab, max_position_embeddings=2048, rms_norm_eps=1e-6, bos_token_id=1,
        eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, initializer_range=text_init_std,
    )
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(text).eval()
    main = {k: v for k, v in lm.state_dict().items()}
    torch.manual_seed(seed + 1)
    tower = CLIPVisionModel(vision).eval()
    # transformers 5 names CLIPVisionModel's tensors without "vision_model."; the hub has it
    tower_sd = {k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()}
    projector = build_projector(PROJECTOR[version], vision.hidden_size, text.hidden_size)
    for k, v in random_state_dict(projector, seed=seed + 2).items():
        main[f"model.mm_projector.{k}"] = v
    if tower_in_checkpoint:
        for k, v in tower_sd.items():
            main[f"model.vision_tower.vision_tower.vision_model.{k}"] = v
    # the standalone tower mm_vision_tower names: equal (V1, frozen) or pre-fine-tuning (V2)
    standalone = dict(tower_sd)
    if version == "v2" and tower_in_checkpoint:
        gen = torch.Generator().manual_seed(seed + 1000)
        standalone = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in standalone.items()}
    tower_dir = clip_tower_path(directory)
    _write_clip_tower(standalone, vision, tower_dir)
    _write_weights(main, directory, fmt, shards, dtype)

    t = s["text"]
    config: dict[str, Any] = {
        "_name_or_path": "mtgv/MobileLLaMA-1.4B-Chat",
        "architectures": ["MobileLlamaForCausalLM"],
        "model_type": "mobilevlm",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": t["hidden_size"],
        "intermediate_size": t["intermediate_size"],
        "num_hidden_layers": t["num_hidden_layers"],
        "num_attention_heads": t["num_attention_heads"],
        "num_key_value_heads": t["num_key_value_heads"],
        "max_position_embeddings": 2048,
        "max_sequence_length": 2048,
        "rms_norm_eps": 1e-6,
        "rope_scaling": None,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": vocab,
        "torch_dtype": dtype,
        "transformers_version": "4.33.1",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "image_aspect_ratio": "pad",
        "image_grid_pinpoints": None,
        "mm_hidden_size": vision.hidden_size,
        "mm_projector_type": PROJECTOR[version],
        "mm_projector_lr": None,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2,
        "mm_vision_tower": str(tower_dir),
        "vision_tower_type": "clip",
    }
    if version == "v2":
        config["unfreeze_mm_vision_tower"] = True
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.33.1"}, indent=2
    ))
    tok.save_pretrained(str(directory))
    return directory


def _write_weights(tensors: dict[str, Any], directory: Path, fmt: str, shards: int, dtype: str) -> None:
    import torch

    tensors = {k: v.detach().to(getattr(torch, dtype)).contiguous().clone() for k, v in sorted(tensors.items())}
    if fmt == "bin":
        from vlkit.testing.checkpoint import write_bin

        write_bin(directory, tensors, shards=shards if shards > 1 else None)
    elif fmt == "safetensors":
        from vlkit.testing.checkpoint import write_safetensors

        write_safetensors(directory, tensors, shards=shards if shards > 1 else None)
    else:
        raise ValueError(f"fmt must be 'bin' or 'safetensors', got {fmt!r}")


def _write_clip_tower(tower: dict[str, Any], vision: Any, path: Path) -> None:
    """A standalone ``CLIPVisionModel`` directory as the hub's CLIP checkpoints have (``vision_model.*``)."""
    import transformers

    from vlkit.testing.checkpoint import write_safetensors

    path.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in vision.to_dict().items() if k not in ("architectures", "transformers_version", "dtype")}
    cfg.update(architectures=["CLIPVisionModel"], model_type="clip_vision_model", torch_dtype="float32")
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    write_safetensors(path, {f"vision_model.{k}": v.detach().contiguous().clone() for k, v in tower.items()})
    size = vision.image_size
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(str(path))
