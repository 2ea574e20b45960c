"""MobileVLM's vision side as torch modules: a CLIP ViT tower and the LDP / LDPv2 projectors.

Parameter names follow the checkpoints, so tensors map by prefix only:

* tower: the core's truncated CLIP (:mod:`vlkit.towers.clip`) under transformers' CLIP names
  (``embeddings.*``, ``pre_layrnorm.*``, ``encoder.layers.N.*``) — the checkpoint's
  ``model.vision_tower.vision_tower.vision_model.*`` or a standalone tower's ``vision_model.*``;
* projector: the MobileVLM repository's module tree under ``model.mm_projector.``:
  ``ldpnet`` -> ``model.mlp.{1,3}``, ``model.mb_block.{1,2}.block.{0.0,0.1,1.fc1,1.fc2,2.0,2.1}``
  (index 0 of both Sequentials is an Identity); ``ldpnetv2`` -> ``mlp.mlp.{0,2}``,
  ``peg.peg.0``; ``mlpNx_gelu`` -> ``0, 2, 4...``; ``linear`` -> the bare Linear.

The LDP block is re-derived from the published structure (``LDPBlock`` in
``mobilevlm/model/vision_projector.py``, built from torchvision's MobileNetV3
``InvertedResidual`` with timm's ``LayerNormAct2d`` and torchvision's ``SqueezeExcitation``):
depthwise 3x3 conv (no bias) -> channel LayerNorm (eps 1e-5) -> Hardswish -> SE (mean pool,
1x1 conv, ReLU, 1x1 conv, Hardsigmoid, scale) -> pointwise 1x1 conv (no bias) -> channel
LayerNorm; the residual only for the stride-1 block. Only the CLIP layers up to the selected
one are built (layer -2: the last layer and the post-layernorm are never run nor loaded).

Everything runs batched: one forward for all images of a step, no per-image Python loop.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.plugin import CLIPTower, resolve_layers
from vlkit_plugin_mobilevlm.layout import LDPV2_GRID

# -- projectors ---------------------------------------------------------------------------


def _grid(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[B, N, C]`` tokens -> ``[B, C, h, h]`` (``N`` must be a square, as in the original)."""
    b, n, c = x.shape
    h = math.isqrt(n)
    if h * h != n:
        raise ValueError(f"the LDP projectors need a square grid of tokens, got {n}")
    return x.transpose(1, 2).reshape(b, c, h, h), h


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``[B, C, H, W]`` map (timm's ``LayerNormAct2d`` without act)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class ConvNorm(nn.Sequential):
    """``Conv2d`` (no bias) -> ``LayerNorm2d`` [-> ``Hardswish``]: torchvision's Conv2dNormActivation layout."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, act: bool) -> None:
        mods: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            LayerNorm2d(cout, eps=1e-5),
        ]
        if act:
            mods.append(nn.Hardswish())
        super().__init__(*mods)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNet's channel rounding (torchvision ``_make_divisible``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    """MobileNetV3 block with equal in/expanded/out channels: no expansion conv."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            ConvNorm(channels, channels, 3, stride, channels, act=True),
            SqueezeExcite(channels, make_divisible(channels // 4)),
            ConvNorm(channels, channels, 1, 1, 1, act=False),
        )
        self.residual = stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.residual else y


class _LDPBlock(nn.Module):
    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
        self.mb_block = nn.Sequential(nn.Identity(), InvertedResidual(ouc, 1), InvertedResidual(ouc, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = _grid(self.mlp(x))
        return self.mb_block(x).flatten(2).transpose(1, 2)


class LDPProjector(nn.Module):
    """MobileVLM V1 ``ldpnet``: MLP, then two inverted-residual blocks (stride 1 + residual, stride 2)."""

    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        if make_divisible(ouc) != ouc:
            raise ValueError(f"ldpnet needs the LM hidden size to be a multiple of 8 (MobileNet rounding), got {ouc}")
        self.model = _LDPBlock(inc, ouc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _FeatureMLP(nn.Module):
    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class _PosInject(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=True, groups=channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.peg(x) + x


class LDPv2Projector(nn.Module):
    """MobileVLM V2 ``ldpnetv2``: MLP -> adaptive average pool to 12x12 -> depthwise conv PEG + skip."""

    def __init__(self, inc: int, ouc: int, grid: int = LDPV2_GRID) -> None:
        super().__init__()
        self.grid = grid
        self.mlp = _FeatureMLP(inc, ouc)
        self.peg = _PosInject(ouc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = _grid(self.mlp(x))
        x = F.adaptive_avg_pool2d(x, (self.grid, self.grid))
        return self.peg(x).flatten(2).transpose(1, 2)


def build_projector(kind: str, inc: int, ouc: int) -> nn.Module:
    if kind == "ldpnetv2":
        return LDPv2Projector(inc, ouc)
    if kind == "ldpnet":
        return LDPProjector(inc, ouc)
    if kind == "linear":
        return nn.Linear(inc, ouc)
    m = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if not m:
        raise ValueError(f"unknown projector {kind!r}")
    mods: list[nn.Module] = [nn.Linear(inc, ouc)]
    for _ in range(1, int(m.group(1))):
        mods += [nn.GELU(), nn.Linear(ouc, ouc)]
    return nn.Sequential(*mods)


class MobileVLMVision(nn.Module):
    """Tower + projector of one checkpoint: ``[B, 3, H, W]`` -> ``[B, tokens, lm_hidden]``."""

    def __init__(self, tower_config: dict[str, Any], select_layer: int, drop_cls: bool, projector: str,
                 lm_hidden: int) -> None:
        super().__init__()
        (layer,) = resolve_layers((select_layer,), int(tower_config["num_hidden_layers"]), "mm_vision_select_layer")
        self.drop_cls = drop_cls
        self.tower = CLIPTower(tower_config, layer)
        self.projector = build_projector(projector, int(tower_config["hidden_size"]), lm_hidden)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.tower(pixel_values)
        if self.drop_cls:
            feats = feats[:, 1:]
        return self.projector(feats)

    def fuse(self) -> MobileVLMVision:
        self.tower.fuse()
        return self
