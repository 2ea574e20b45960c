"""InternViT, pixel shuffle and the ``mlp1`` projector: InternVL's vision side.

Parameter names follow the original layout (``vision_model.*`` without the prefix, ``mlp1.*``);
:mod:`vlkit_plugin_internvl.vision` maps transformers' names onto them.

* embeddings: a CLS embedding, a patch convolution, absolute positions (bicubically resized
  when the tile is not the trained size);
* each layer: ``x + ls1 * attn(norm1(x))``, then ``x + ls2 * mlp(norm2(x))``; the attention
  has one fused ``qkv`` projection (rows ``[Q; K; V]``), optional RMS q/k normalisation over
  all heads, and an output ``proj``;
* features: the ``select_layer`` hidden state (``-1``: the last layer's output), CLS dropped,
  pixel shuffle by ``downsample_ratio`` (``ps_version`` v2 swaps height and width back, v1
  does not), then ``mlp1`` = LayerNorm, Linear, GELU, Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkit_plugin_internvl.layout import InternVLLayout


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _norm(lay: InternVLLayout, dim: int) -> nn.Module:
    if lay.norm_type == "rms_norm":
        return RMSNorm(dim, lay.layer_norm_eps)
    if lay.norm_type == "layer_norm":
        return nn.LayerNorm(dim, eps=lay.layer_norm_eps)
    raise ValueError(f"unknown vision norm_type {lay.norm_type!r}")


def _act(name: str) -> nn.Module:
    from transformers.activations import ACT2FN

    return ACT2FN[name]


class Embeddings(nn.Module):
    def __init__(self, lay: InternVLLayout) -> None:
        super().__init__()
        d = lay.vit_hidden
        self.grid = lay.image_size // lay.patch_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(3, d, kernel_size=lay.patch_size, stride=lay.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, d))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))
        b, d, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = self.position_embedding
        if (h, w) != (self.grid, self.grid):
            grid = pos[:, 1:].float().reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], grid.reshape(1, d, h * w).permute(0, 2, 1).to(pos.dtype)], dim=1)
        cls = self.class_embedding.expand(b, 1, d).to(x.dtype)
        return torch.cat([cls, x], dim=1) + pos.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, lay: InternVLLayout) -> None:
        super().__init__()
        d = lay.vit_hidden
        self.heads = lay.vit_heads
        self.qkv = nn.Linear(d, 3 * d, bias=lay.qkv_bias)
        self.proj = nn.Linear(d, d)
        self.qk_norm = lay.qk_norm
        if lay.qk_norm:
            self.q_norm = RMSNorm(d, lay.layer_norm_eps)
            self.k_norm = RMSNorm(d, lay.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        h = self.heads
        q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, lay: InternVLLayout) -> None:
        super().__init__()
        self.fc1 = nn.Linear(lay.vit_hidden, lay.vit_intermediate)
        self.act = _act(lay.vit_act)
        self.fc2 = nn.Linear(lay.vit_intermediate, lay.vit_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, lay: InternVLLayout) -> None:
        super().__init__()
        d = lay.vit_hidden
        self.norm1 = _norm(lay, d)
        self.attn = Attention(lay)
        self.ls1 = nn.Parameter(torch.ones(d))
        self.norm2 = _norm(lay, d)
        self.mlp = MLP(lay)
        self.ls2 = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class Encoder(nn.Module):
    def __init__(self, lay: InternVLLayout, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(lay) for _ in range(num_layers)])


class InternViT(nn.Module):
    """The tower, truncated after the layer whose output is used."""

    def __init__(self, lay: InternVLLayout) -> None:
        super().__init__()
        self.embeddings = Embeddings(lay)
        # hidden_states[i] is the input of layer i (hidden_states[0]: the embeddings);
        # select_layer -1 is the last layer's output.
        sel = lay.select_layer
        used = lay.vit_layers + 1 + sel if sel < 0 else sel
        if not 0 <= used <= lay.vit_layers:
            raise ValueError(f"select_layer {sel} is outside a {lay.vit_layers}-layer vision tower")
        self.num_used = used
        self.encoder = Encoder(lay, used)
        self.final_norm = nn.LayerNorm(lay.vit_hidden, eps=lay.layer_norm_eps) if (
            lay.final_norm and used == lay.vit_layers
        ) else None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


def pixel_shuffle(x: torch.Tensor, factor: int, version: str) -> torch.Tensor:
    """``[n, w, h, c]`` -> ``[n, w / f, h / f, c * f * f]`` as the original (``scale = 1 / f``)."""
    n, w, h, c = x.shape
    if w % factor or h % factor:
        raise ValueError(f"a {w}x{h} feature grid does not divide by the pixel-shuffle factor {factor}")
    x = x.reshape(n, w, h // factor, c * factor)
    x = x.permute(0, 2, 1, 3).reshape(n, h // factor, w // factor, c * factor * factor)
    if version != "v1":
        x = x.permute(0, 2, 1, 3)
    return x.contiguous()


class InternVLVision(nn.Module):
    """Tiles ``[n, 3, S, S]`` -> embeddings ``[n, tokens_per_tile, lm_hidden]``."""

    def __init__(self, lay: InternVLLayout) -> None:
        super().__init__()
        self.layout = lay
        self.vision_model = InternViT(lay)
        f = lay.shuffle_factor
        d = lay.vit_hidden * f * f
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, lay.lm_hidden), _act(lay.projector_act), nn.Linear(lay.lm_hidden, lay.lm_hidden)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.vision_model(pixels)[:, 1:]
        n, t, c = x.shape
        side = int(round(t**0.5))
        x = pixel_shuffle(x.reshape(n, side, side, c), self.layout.shuffle_factor, self.layout.ps_version)
        return self.mlp1(x.reshape(n, -1, x.shape[-1]))
