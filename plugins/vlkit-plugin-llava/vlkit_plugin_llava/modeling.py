"""The vision side of LLaVA as torch modules: a CLIP ViT tower and the multimodal projector.

Only the layers up to the deepest feature layer the checkpoint uses are built (LLaVA takes
layer -2, so the last CLIP layer and the post-layernorm are never run nor loaded). Parameter
names follow transformers' CLIP (``embeddings.*``, ``pre_layrnorm.*``, ``encoder.layers.N.*``)
so checkpoint tensors map by prefix only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _activation(name: str) -> nn.Module:
    from transformers.activations import ACT2FN

    return ACT2FN[name]


class CLIPEmbeddings(nn.Module):
    def __init__(self, hidden: int, image_size: int, patch_size: int, channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_positions = (image_size // patch_size) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.empty(hidden))
        self.patch_embedding = nn.Conv2d(channels, hidden, kernel_size=patch_size, stride=patch_size, bias=False)
        self.position_embedding = nn.Embedding(self.num_positions, hidden)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        w = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(w.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1)
        if x.shape[1] != self.num_positions:
            raise ValueError(
                f"pixel values of {tuple(pixel_values.shape[-2:])} give {x.shape[1] - 1} patches; the tower "
                f"has position embeddings for {self.num_positions - 1}"
            )
        return x + self.position_embedding.weight.unsqueeze(0)


class CLIPAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.act = _activation(act)
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


class _Layers(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class CLIPTower(nn.Module):
    """A CLIP ViT truncated after ``num_layers`` encoder layers.

    ``forward`` returns the hidden states after each index in ``feature_layers`` (0 is the
    pre-layernormed embeddings, ``k`` the output of layer ``k``), as transformers'
    ``hidden_states[k]``.
    """

    def __init__(self, config: dict[str, Any], num_layers: int) -> None:
        super().__init__()
        hidden = int(config["hidden_size"])
        eps = float(config.get("layer_norm_eps", 1e-5))
        self.image_size = int(config["image_size"])
        self.patch_size = int(config["patch_size"])
        self.embeddings = CLIPEmbeddings(hidden, self.image_size, self.patch_size, int(config.get("num_channels", 3)))
        self.pre_layrnorm = nn.LayerNorm(hidden, eps=eps)
        self.encoder = _Layers([
            CLIPEncoderLayer(
                hidden, int(config["intermediate_size"]), int(config["num_attention_heads"]),
                config.get("hidden_act", "quick_gelu"), eps,
            )
            for _ in range(num_layers)
        ])

    def forward(self, pixel_values: torch.Tensor, feature_layers: tuple[int, ...]) -> list[torch.Tensor]:
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        wanted = set(feature_layers)
        states = {0: x} if 0 in wanted else {}
        for i, layer in enumerate(self.encoder.layers, start=1):
            x = layer(x)
            if i in wanted:
                states[i] = x
        return [states[k] for k in feature_layers]


class Projector(nn.Module):
    """``Linear`` or ``Linear, act, Linear, ...`` (indices 0, 2, 4... as the original's Sequential)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, act: str, bias: bool) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
        for _ in range(depth - 1):
            mods += [_activation(act), nn.Linear(out_dim, out_dim, bias=bias)]
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LlavaVision(nn.Module):
    """Tower + projector (+ ``image_newline``) of one checkpoint."""

    def __init__(
        self, tower_config: dict[str, Any], feature_layers: tuple[int, ...], drop_cls: bool,
        lm_hidden: int, projector_depth: int, projector_act: str, projector_bias: bool, newline: bool,
    ) -> None:
        super().__init__()
        total = int(tower_config["num_hidden_layers"])
        self.feature_layers = tuple(k if k >= 0 else total + 1 + k for k in feature_layers)
        if any(not 0 <= k <= total for k in self.feature_layers):
            raise ValueError(f"feature layers {feature_layers} out of range for a {total}-layer tower")
        self.drop_cls = drop_cls
        self.tower = CLIPTower(tower_config, max(self.feature_layers))
        in_dim = int(tower_config["hidden_size"]) * len(self.feature_layers)
        self.projector = Projector(in_dim, lm_hidden, projector_depth, projector_act, projector_bias)
        self.image_newline = nn.Parameter(torch.empty(lm_hidden)) if newline else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[tiles, 3, H, W]`` -> projected features ``[tiles, tokens_per_tile, lm_hidden]``."""
        states = self.tower(pixel_values, self.feature_layers)
        if self.drop_cls:
            states = [s[:, 1:] for s in states]
        feats = states[0] if len(states) == 1 else torch.cat(states, dim=-1)
        return self.projector(feats)
