"""Idefics3's vision side as plain torch modules: a SigLIP-style transformer + the connector.

Module names follow transformers' ``Idefics3Model`` without its ``model.`` prefix
(``vision_model.embeddings.patch_embedding``, ``vision_model.encoder.layers.N.self_attn.q_proj``,
``vision_model.post_layernorm``, ``connector.modality_projection.proj``), so the checkpoint's
tensors load by stripping that prefix.

What differs from CLIP's tower: no class token and no pre-layernorm; a post-layernorm;
``gelu_pytorch_tanh``; and NaViT-style position ids for tiles whose lower/right part is
padding (``patch_attention_mask``): the valid patches' fractional coordinates are bucketed
onto the full position grid, padded patches take position 0 and are masked out as keys.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def activation(name: str) -> nn.Module:
    """transformers' activation called ``name`` (``gelu_pytorch_tanh`` for Idefics3's SigLIP)."""
    from transformers.activations import ACT2FN

    return ACT2FN[name]


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim, self.patch_size = int(cfg["hidden_size"]), int(cfg["patch_size"])
        self.patch_embedding = nn.Conv2d(int(cfg.get("num_channels", 3)), dim, kernel_size=self.patch_size,
                                         stride=self.patch_size, padding="valid")
        self.num_patches_per_side = int(cfg["image_size"]) // self.patch_size
        self.position_embedding = nn.Embedding(self.num_patches_per_side**2, dim)

    def position_ids(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """``[B, h*w]`` position ids of a ``[B, h, w]`` boolean patch mask (transformers' rule)."""
        b, h, w = patch_mask.shape
        side = self.num_patches_per_side
        device = patch_mask.device
        boundaries = torch.arange(1 / side, 1.0, 1 / side, device=device)
        step_h = 1.0 / patch_mask[:, :, 0].sum(dim=1)
        step_w = 1.0 / patch_mask[:, 0, :].sum(dim=1)
        coords_h = torch.arange(h, device=device, dtype=torch.float32)[None, :] * step_h[:, None]
        coords_w = torch.arange(w, device=device, dtype=torch.float32)[None, :] * step_w[:, None]
        bucket_h = torch.bucketize(coords_h.clamp(max=1.0 - 1e-6), boundaries, right=True)
        bucket_w = torch.bucketize(coords_w.clamp(max=1.0 - 1e-6), boundaries, right=True)
        ids = (bucket_h[:, :, None] * side + bucket_w[:, None, :]).reshape(b, -1)
        return torch.where(patch_mask.reshape(b, -1), ids, torch.zeros_like(ids))

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        return x + self.position_embedding(self.position_ids(patch_mask))


class VisionAttention(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim = int(cfg["hidden_size"])
        self.num_heads = int(cfg["num_attention_heads"])
        if dim % self.num_heads:
            raise ValueError(f"vision hidden_size {dim} does not divide into {self.num_heads} heads")
        self.head_dim = dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)),
                                             attn_mask=mask, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(int(cfg["hidden_size"]), int(cfg["intermediate_size"]))
        self.act = activation(cfg.get("hidden_act", "gelu_pytorch_tanh"))
        self.fc2 = nn.Linear(int(cfg["intermediate_size"]), int(cfg["hidden_size"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        dim, eps = int(cfg["hidden_size"]), float(cfg.get("layer_norm_eps", 1e-6))
        self.self_attn = VisionAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = VisionMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(int(cfg["num_hidden_layers"])))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(int(cfg["hidden_size"]), eps=float(cfg.get("layer_norm_eps", 1e-6)))

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values, patch_mask)
        b = x.shape[0]
        flat = patch_mask.reshape(b, -1)
        # padded patches are masked as keys (every query attends to its tile's valid patches)
        mask = None if bool(flat.all()) else flat[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, mask)
        return self.post_layernorm(x)


class ModalityProjection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=False)


class Connector(nn.Module):
    """Pixel shuffle (``scale_factor`` x ``scale_factor`` patches -> one token) + a linear projection."""

    def __init__(self, vision_hidden: int, scale_factor: int, lm_hidden: int) -> None:
        super().__init__()
        self.scale_factor = int(scale_factor)
        self.modality_projection = ModalityProjection(vision_hidden * self.scale_factor**2, lm_hidden)

    def pixel_shuffle(self, x: torch.Tensor) -> torch.Tensor:
        b, seq, d = x.shape
        side, f = int(seq**0.5), self.scale_factor
        x = x.view(b, side, side // f, d * f).permute(0, 2, 1, 3)
        x = x.reshape(b, side // f, side // f, d * f * f).permute(0, 2, 1, 3)
        return x.reshape(b, seq // (f * f), d * f * f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.modality_projection.proj(self.pixel_shuffle(x))


class Idefics3Vision(nn.Module):
    """``vision_model`` + ``connector``: ``[tiles, 3, H, W]`` pixels -> ``[tiles, image_seq_len, lm_hidden]``."""

    def __init__(self, vision_config: dict[str, Any], scale_factor: int, lm_hidden: int) -> None:
        super().__init__()
        side = int(vision_config["image_size"]) // int(vision_config["patch_size"])
        if side % int(scale_factor):
            raise ValueError(f"{side}x{side} patches per tile do not pixel-shuffle by scale_factor {scale_factor}")
        self.patch_size = int(vision_config["patch_size"])
        self.vision_model = VisionTransformer(vision_config)
        self.connector = Connector(int(vision_config["hidden_size"]), scale_factor, lm_hidden)

    def patch_mask(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """A ``[B, H, W]`` pixel mask -> ``[B, H/p, W/p]``: a patch counts if any of its pixels does."""
        p = self.patch_size
        sub = pixel_mask.unfold(1, p, p).unfold(2, p, p)
        return sub.sum(dim=(-1, -2)) > 0

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        if pixel_mask is None:
            b, _, h, w = pixel_values.shape
            patch_mask = torch.ones(b, h // self.patch_size, w // self.patch_size, dtype=torch.bool,
                                    device=pixel_values.device)
        else:
            patch_mask = self.patch_mask(pixel_mask.to(pixel_values.device))
        return self.connector(self.vision_model(pixel_values, patch_mask))
