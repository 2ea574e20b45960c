"""A CLIP ViT tower that stops at the deepest layer a VLM reads.

VLMs take CLIP features from an inner layer (LLaVA and MobileVLM: layer -2), so the layers
after it and the post-layernorm are neither built nor loaded. Parameter names are
transformers' ``CLIPVisionModel`` ones below ``vision_model.`` (``embeddings.*``,
``pre_layrnorm.*``, ``encoder.layers.N.*``), so checkpoint tensors map by a prefix only.

``CLIPTower(config, num_layers)(pixel_values)`` equals transformers'
``CLIPVisionModel(config)(pixel_values, output_hidden_states=True).hidden_states[num_layers]``
(0 is the pre-layernormed embeddings); :meth:`CLIPTower.hidden_states` returns several such
states at once. After loading, :meth:`CLIPTower.fuse` packs each layer's q/k/v projections
into one matmul.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def clip_activation(name: str) -> nn.Module:
    """transformers' activation module called ``name`` (``quick_gelu``, ``gelu``...)."""
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def clip_vision_config(raw: dict[str, Any], where: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A complete CLIP vision config dict (transformers' defaults filled in) from a tower's
    ``config.json`` (a ``CLIPVisionConfig``, or a full ``CLIPConfig`` whose vision half is taken).

    :raises error: naming ``where`` when the tower is not a CLIP.
    """
    if raw.get("model_type") == "clip":
        raw = raw.get("vision_config") or {}
    mt = raw.get("model_type", "clip_vision_model")
    if mt != "clip_vision_model":
        raise error(f"{where}: vision tower model_type {mt!r} is not supported (CLIP only)")
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**{k: v for k, v in raw.items() if k != "model_type"}).to_dict()


def resolve_layers(layers: tuple[int, ...] | list[int], total: int, what: str = "feature layer") -> tuple[int, ...]:
    """Hidden-state indices with negatives counted from the end (``-1`` = ``total``), as
    transformers' ``hidden_states``; raises ``ValueError`` naming ``what`` when out of range."""
    out = tuple(k if k >= 0 else total + 1 + k for k in layers)
    if any(not 0 <= k <= total for k in out):
        raise ValueError(f"{what} {tuple(layers)} out of range for a {total}-layer tower")
    return out


class CLIPEmbeddings(nn.Module):
    def __init__(self, hidden: int, image_size: int, patch_size: int, channels: int = 3) -> None:
        super().__init__()
        self.num_positions = (image_size // patch_size) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.empty(hidden))
        self.patch_embedding = nn.Conv2d(channels, hidden, kernel_size=patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Embedding(self.num_positions, hidden)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        w = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(w.dtype)).flatten(2).transpose(1, 2)
        if patches.shape[1] + 1 != self.num_positions:
            raise ValueError(
                f"pixel values of {tuple(pixel_values.shape[-2:])} give {patches.shape[1]} patches; the tower "
                f"has position embeddings for {self.num_positions - 1}"
            )
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.unsqueeze(0)


class CLIPAttention(nn.Module):
    """Self-attention with transformers' parameter names; :meth:`fuse` packs q, k, v into one matmul."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.hidden = hidden
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.qkv: nn.Linear | None = None

    def fuse(self) -> None:
        """Replace ``q_proj``/``k_proj``/``v_proj`` by one ``[3 * hidden, hidden]`` linear (after loading)."""
        if self.qkv is not None:
            return
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]).detach()
        b = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]).detach()
        qkv = nn.Linear(self.hidden, 3 * self.hidden, device=w.device, dtype=w.dtype)
        qkv.weight, qkv.bias = nn.Parameter(w, requires_grad=False), nn.Parameter(b, requires_grad=False)
        self.qkv = qkv
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        hd = d // self.heads
        if self.qkv is not None:
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (p(x).view(b, n, self.heads, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.act = clip_activation(act)
        self.fc2 = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, heads: int, act: str, eps: float) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = CLIPAttention(hidden, heads)
        self.layer_norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = CLIPMLP(hidden, intermediate, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class CLIPTower(nn.Module):
    """A CLIP ViT truncated after ``num_layers`` encoder layers.

    Args:
        config: a ``CLIPVisionConfig`` as a dict (``hidden_size``, ``intermediate_size``,
            ``num_attention_heads``, ``image_size``, ``patch_size``, ``hidden_act``,
            ``layer_norm_eps``, ``num_channels``).
        num_layers: encoder layers to build (the deepest hidden state any caller reads).
    """

    def __init__(self, config: dict[str, Any], num_layers: int) -> None:
        super().__init__()
        hidden = int(config["hidden_size"])
        eps = float(config.get("layer_norm_eps", 1e-5))
        self.image_size = int(config["image_size"])
        self.patch_size = int(config["patch_size"])
        self.embeddings = CLIPEmbeddings(hidden, self.image_size, self.patch_size, int(config.get("num_channels", 3)))
        self.pre_layrnorm = nn.LayerNorm(hidden, eps=eps)
        self.encoder = _Encoder([
            CLIPEncoderLayer(
                hidden, int(config["intermediate_size"]), int(config["num_attention_heads"]),
                config.get("hidden_act", "quick_gelu"), eps,
            )
            for _ in range(num_layers)
        ])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> the hidden state after the last built layer, ``[B, 1 + patches, hidden]``."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.encoder.layers:
            x = layer(x)
        return x

    def hidden_states(self, pixel_values: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """The hidden states at non-negative indices ``layers`` (``<= num_layers``), in that order."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        wanted = set(layers)
        states = {0: x} if 0 in wanted else {}
        for i, layer in enumerate(self.encoder.layers, start=1):
            x = layer(x)
            if i in wanted:
                states[i] = x
        return [states[k] for k in layers]

    def fuse(self) -> CLIPTower:
        """Pack every layer's q/k/v projections into one linear (call after loading weights)."""
        for layer in self.encoder.layers:
            layer.self_attn.fuse()
        return self
