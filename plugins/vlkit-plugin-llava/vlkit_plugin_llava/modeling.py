"""The vision side of LLaVA as torch modules: the core's truncated CLIP tower
(:mod:`vlkit.towers.clip`) and the multimodal projector.

Only the layers up to the deepest feature layer the checkpoint uses are built (LLaVA takes
layer -2, so the last CLIP layer and the post-layernorm are never run nor loaded). Parameter
names follow transformers' CLIP (``embeddings.*``, ``pre_layrnorm.*``, ``encoder.layers.N.*``)
so checkpoint tensors map by prefix only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlkit.plugin import CLIPTower, clip_activation, resolve_layers


class Projector(nn.Module):
    """``Linear`` or ``Linear, act, Linear, ...`` (indices 0, 2, 4... as the original's Sequential)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, act: str, bias: bool) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
        for _ in range(depth - 1):
            mods += [clip_activation(act), nn.Linear(out_dim, out_dim, bias=bias)]
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
        self.feature_layers = resolve_layers(feature_layers, int(tower_config["num_hidden_layers"]), "feature layers")
        self.drop_cls = drop_cls
        self.tower = CLIPTower(tower_config, max(self.feature_layers))
        in_dim = int(tower_config["hidden_size"]) * len(self.feature_layers)
        self.projector = Projector(in_dim, lm_hidden, projector_depth, projector_act, projector_bias)
        self.image_newline = nn.Parameter(torch.empty(lm_hidden)) if newline else None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[tiles, 3, H, W]`` -> projected features ``[tiles, tokens_per_tile, lm_hidden]``."""
        states = self.tower.hidden_states(pixel_values, self.feature_layers)
        if self.drop_cls:
            states = [s[:, 1:] for s in states]
        feats = states[0] if len(states) == 1 else torch.cat(states, dim=-1)
        return self.projector(feats)

    def fuse(self) -> LlavaVision:
        """One q/k/v matmul per tower layer (after loading)."""
        self.tower.fuse()
        return self
