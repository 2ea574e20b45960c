"""Tiny vision towers: config dicts to embed in VLM configs, and standalone tower checkpoints.

``tiny_clip_vision_config`` / ``tiny_siglip_vision_config`` return the dict a VLM's
``vision_config`` holds (``model_type`` ``clip_vision_model`` / ``siglip_vision_model``).
``write_tiny_clip_vision`` writes a directory that ``CLIPVisionModel.from_pretrained`` and
``CLIPImageProcessor.from_pretrained`` load, as the original LLaVA code does with its
``mm_vision_tower`` name; with ``full_clip=True`` it is laid out as the OpenAI CLIP
repositories are (``CLIPConfig`` with text and vision halves, ``CLIPModel`` weights), which
``CLIPVisionModel.from_pretrained`` also reads, ignoring the text half.
``write_tiny_siglip_vision`` does the same for SigLIP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import random_state_dict, write_config, write_preprocessor_config, write_safetensors

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "clip_image_processor_config",
    "siglip_image_processor_config",
    "tiny_clip_vision_config",
    "tiny_siglip_vision_config",
    "write_tiny_clip_vision",
    "write_tiny_siglip_vision",
]

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]
VISION_INIT_STD = 0.05


def tiny_clip_vision_config(*, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                            num_heads: int = 2, image_size: int = 28, patch_size: int = 14,
                            projection_dim: int = 32, **overrides) -> dict[str, Any]:
    """A ``CLIPVisionConfig`` dict (``vision_config`` of LLaVA-style configs)."""
    cfg = {
        "model_type": "clip_vision_model",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "num_channels": 3,
        "projection_dim": projection_dim,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
    }
    cfg.update(overrides)
    return cfg


def tiny_siglip_vision_config(*, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                              num_heads: int = 2, image_size: int = 28, patch_size: int = 14,
                              **overrides) -> dict[str, Any]:
    """A ``SiglipVisionConfig`` dict (DeepSeek-VL's and others' ``vision_config``)."""
    cfg = {
        "model_type": "siglip_vision_model",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "num_channels": 3,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "attention_dropout": 0.0,
    }
    cfg.update(overrides)
    return cfg


def clip_image_processor_config(image_size: int = 28, **overrides) -> dict[str, Any]:
    """``preprocessor_config.json`` of OpenAI CLIP: resize the short side to ``image_size``
    (bicubic), center-crop ``image_size`` square, CLIP mean/std."""
    cfg = {
        "image_processor_type": "CLIPImageProcessor",
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }
    cfg.update(overrides)
    return cfg


def siglip_image_processor_config(image_size: int = 28, **overrides) -> dict[str, Any]:
    """``preprocessor_config.json`` of SigLIP: resize to ``image_size`` square (bicubic), no
    crop, mean/std 0.5."""
    cfg = {
        "image_processor_type": "SiglipImageProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(SIGLIP_MEAN),
        "image_std": list(SIGLIP_STD),
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
    }
    cfg.update(overrides)
    return cfg


def _write_model(model, directory: Path, seed: int) -> None:
    import torch

    model.load_state_dict(random_state_dict(model, seed, std=VISION_INIT_STD))
    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.float32
    cfg = model.config.to_diff_dict()
    cfg.pop("transformers_version", None)
    write_config(directory, cfg)
    write_safetensors(directory, model.state_dict())


def write_tiny_clip_vision(directory, *, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                           num_heads: int = 2, image_size: int = 28, patch_size: int = 14, seed: int = 0,
                           full_clip: bool = False) -> Path:
    """A tiny CLIP vision tower directory: config.json, model.safetensors (``vision_model.*``
    keys, as ``CLIPVisionModel`` saves them) and ``preprocessor_config.json``
    (:func:`clip_image_processor_config`). ``full_clip`` writes a whole ``CLIPModel`` with a
    tiny text half instead, as ``openai/clip-vit-*`` repositories are."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    d = Path(directory)
    vision = tiny_clip_vision_config(hidden_size=hidden_size, intermediate_size=intermediate_size,
                                     num_layers=num_layers, num_heads=num_heads, image_size=image_size,
                                     patch_size=patch_size)
    vision_kwargs = {k: v for k, v in vision.items() if k != "model_type"}
    torch.manual_seed(seed)
    if full_clip:
        text = {"hidden_size": hidden_size, "intermediate_size": intermediate_size, "num_hidden_layers": num_layers,
                "num_attention_heads": num_heads, "vocab_size": 99, "max_position_embeddings": 16,
                "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
                "projection_dim": vision["projection_dim"]}
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision_kwargs,
                                     projection_dim=vision["projection_dim"]))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision_kwargs))
    _write_model(model, d, seed)
    write_preprocessor_config(d, clip_image_processor_config(image_size))
    return d


def write_tiny_siglip_vision(directory, *, hidden_size: int = 32, intermediate_size: int = 64, num_layers: int = 2,
                             num_heads: int = 2, image_size: int = 28, patch_size: int = 14, seed: int = 0) -> Path:
    """A tiny standalone ``SiglipVisionModel`` directory (``vision_model.*`` keys, attention-
    pooling head included) with :func:`siglip_image_processor_config`."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    d = Path(directory)
    vision = tiny_siglip_vision_config(hidden_size=hidden_size, intermediate_size=intermediate_size,
                                       num_layers=num_layers, num_heads=num_heads, image_size=image_size,
                                       patch_size=patch_size)
    torch.manual_seed(seed)
    model = SiglipVisionModel(SiglipVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"}))
    _write_model(model, d, seed)
    write_preprocessor_config(d, siglip_image_processor_config(image_size))
    return d
