"""DeepSeek-VL's vision towers and aligners, written for vlkit.

Parameter names follow the original repository's modules (timm-style SigLIP, the repository's
SAM-B with ``neck_hd``/``downsamples``, ``MlpProjector``); :mod:`vlkit_plugin_deepseek.layout`
maps transformers' names onto them.

* :class:`SiglipTower` — ViT without class token: patch conv + learned positions, pre-norm
  blocks with a fused ``qkv``, exact GELU MLP, final LayerNorm (the attention-pool head is
  never run, so it is not built).
* :class:`SamTower` — SAM-B image encoder: windowed / global attention with decomposed relative
  positions, ``neck`` on the last block, ``neck_hd`` on the first global block, both resized
  to ``feature_size`` (96 in the original) and sent through the same stride-2 ``downsamples``,
  summed with the learned ``hd_alpha_downsamples``.
* :class:`Aligner` — ``mlp_gelu`` (``layers.0``, GELU, ``layers.2``...) or
  ``low_high_hybrid_split_mlp_gelu`` (``high_up_proj``/``low_up_proj`` halves concatenated
  [high, low], then GELU, ``layers.1``...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, names: tuple[str, str] = ("fc1", "fc2"), act: str = "gelu") -> None:
        super().__init__()
        self._names = names
        setattr(self, names[0], nn.Linear(dim, hidden))
        setattr(self, names[1], nn.Linear(hidden, dim))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = getattr(self, self._names[0])(x)
        h = F.gelu(h, approximate="tanh") if self.act == "gelu_tanh" else F.gelu(h)
        return getattr(self, self._names[1])(h)


# --------------------------------------------------------------------------------------------
# SigLIP (timm VisionTransformer, no class token)


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class _SiglipAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _SiglipBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _SiglipAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, mlp_hidden, ("fc1", "fc2"), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SiglipTower(nn.Module):
    """SigLIP as DeepSeek-VL runs it: ``[B, 3, S, S]`` -> ``[B, (S/p)^2, width]``."""

    def __init__(
        self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_hidden: int,
        eps: float = 1e-6, act: str = "gelu",
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"SigLIP image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, width))
        self.blocks = nn.ModuleList(_SiglipBlock(width, heads, mlp_hidden, eps, act) for _ in range(layers))
        self.norm = nn.LayerNorm(width, eps=eps)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --------------------------------------------------------------------------------------------
# SAM-B


class _LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, H, W]``."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def _neck(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, out, kernel_size=1, bias=False),
        _LayerNorm2d(out),
        nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
        _LayerNorm2d(out),
    )


def _rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """``[q_size, k_size, C]`` relative-position embeddings (resampled linearly if the table
    was trained for another size)."""
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(rel_pos.T.unsqueeze(0), size=length, mode="linear").squeeze(0).T
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    idx = (q - k) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[idx.long()]


class _SamAttention(nn.Module):
    def __init__(self, dim: int, heads: int, size: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, dim // heads))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, dim // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        hd = c // self.heads
        q, k, v = self.qkv(x).view(b, h * w, 3, self.heads, hd).permute(2, 0, 3, 1, 4).reshape(3, b * self.heads, h * w, hd)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        rh = _rel_pos_table(h, h, self.rel_pos_h)
        rw = _rel_pos_table(w, w, self.rel_pos_w)
        rq = q.view(b * self.heads, h, w, hd)
        bias_h = torch.einsum("bhwc,hkc->bhwk", rq, rh)
        bias_w = torch.einsum("bhwc,wkc->bhwk", rq, rw)
        attn = (attn.view(-1, h, w, h, w) + bias_h[..., :, None] + bias_w[..., None, :]).view(-1, h * w, h * w)
        out = attn.softmax(dim=-1) @ v
        out = out.view(b, self.heads, h, w, hd).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj(out)


class _SamBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, window: int, grid: int, eps: float) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _SamAttention(dim, heads, window if window > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, mlp_hidden, ("lin1", "lin2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            b, h, w, c = x.shape
            ws = self.window
            ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
            hp, wp = h + ph, w + pw
            x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, c)
            x = self.attn(x)
            x = x.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
            x = x[:, :h, :w, :]
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class SamTower(nn.Module):
    """SAM-B with DeepSeek-VL's downsampling: ``[B, 3, S, S]`` -> ``[B, C, f/4, f/4]``
    (``f`` = ``feature_size``, ``C`` = ``downsample_channels[-1]``)."""

    def __init__(
        self, image_size: int, patch_size: int, width: int, layers: int, heads: int, mlp_hidden: int,
        global_attn_indexes: Sequence[int], out_chans: int, downsample_channels: Sequence[int],
        window_size: int = 14, feature_size: int = 96, eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"SAM image_size {image_size} is not a multiple of patch_size {patch_size}")
        grid = image_size // patch_size
        self.image_size, self.feature_size = image_size, feature_size
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, width))
        self.blocks = nn.ModuleList(
            _SamBlock(width, heads, mlp_hidden, 0 if i in set(global_attn_indexes) else window_size, grid, eps)
            for i in range(layers)
        )
        self.neck = _neck(width, out_chans)
        downs, cin = [], out_chans
        for cout in downsample_channels:
            downs.append(nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1, bias=False))
            cin = cout
        self.downsamples = nn.Sequential(*downs)
        self.neck_hd = _neck(width, out_chans)
        self.hd_alpha_downsamples = nn.Parameter(torch.zeros(1))
        if not any(b.window == 0 for b in self.blocks):
            raise ValueError("SAM tower needs at least one global-attention block (global_attn_indexes)")

    @property
    def out_grid(self) -> int:
        size = self.feature_size
        for _ in self.downsamples:
            size = (size - 1) // 2 + 1
        return size

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.feature_size, self.feature_size)
        x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False).to(x.dtype)
        return self.downsamples(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).permute(0, 2, 3, 1) + self.pos_embed
        first_global = None
        for blk in self.blocks:
            x = blk(x)
            if first_global is None and blk.window == 0:
                first_global = x
        out = self._down(self.neck(x.permute(0, 3, 1, 2)))
        hd = self._down(self.neck_hd(first_global.permute(0, 3, 1, 2)))
        return out + hd * self.hd_alpha_downsamples


# --------------------------------------------------------------------------------------------
# aligners and the assembled vision sides


class Aligner(nn.Module):
    """The original ``MlpProjector`` (types ``mlp_gelu``, ``linear``, ``low_high_hybrid_split_mlp_gelu``)."""

    def __init__(self, projector_type: str, input_dim: int, n_embed: int, depth: int = 1) -> None:
        super().__init__()
        self.projector_type = projector_type
        mods: list[nn.Module] = []
        if projector_type == "linear":
            mods = [nn.Linear(input_dim, n_embed)]
        elif projector_type == "mlp_gelu":
            mods = [nn.Linear(input_dim, n_embed)]
            for _ in range(1, depth):
                mods += [nn.GELU(), nn.Linear(n_embed, n_embed)]
        elif projector_type == "low_high_hybrid_split_mlp_gelu":
            self.high_up_proj = nn.Linear(input_dim, n_embed // 2)
            self.low_up_proj = nn.Linear(input_dim, n_embed // 2)
            for _ in range(1, depth):
                mods += [nn.GELU(), nn.Linear(n_embed, n_embed)]
        else:
            raise ValueError(f"unsupported aligner projector_type {projector_type!r}")
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        if self.projector_type == "low_high_hybrid_split_mlp_gelu":
            x = torch.cat([self.high_up_proj(x), self.low_up_proj(low)], dim=-1)
        return self.layers(x)


def _normalize(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    if mean is None or std is None:
        return x
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class SiglipVision(nn.Module):
    """1.3b: SigLIP then the aligner. ``pixel_norm`` is the tower's own normalisation (the
    original ``CLIPVisionTower(pixel_mean, pixel_std)``), ``None`` when the processor does it."""

    def __init__(self, tower: SiglipTower, aligner: Aligner, pixel_norm: tuple | None = None) -> None:
        super().__init__()
        self.vision_tower = tower
        self.aligner = aligner
        self.pixel_norm = pixel_norm

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.pixel_norm is not None:
            pixels = _normalize(pixels, *self.pixel_norm)
        return self.aligner(self.vision_tower(pixels))


class HybridVision(nn.Module):
    """7b: SAM-B on the high-resolution image, SigLIP on the low-resolution one, split aligner.

    ``forward(high)`` is the original model: the low-resolution input is ``high`` resized
    (bilinear, antialiased) to SigLIP's size, and each tower normalises its own input with
    ``high_norm`` / ``low_norm``. ``forward(high, low)`` takes both inputs ready (transformers'
    processor makes them), without further normalisation.
    """

    def __init__(
        self, high: SamTower, low: SiglipTower, aligner: Aligner,
        high_norm: tuple | None = None, low_norm: tuple | None = None,
    ) -> None:
        super().__init__()
        self.vision_tower_high = high
        self.vision_tower_low = low
        self.aligner = aligner
        self.high_norm, self.low_norm = high_norm, low_norm

    def forward(self, high: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
        if low is None:
            size = self.vision_tower_low.image_size
            low = F.interpolate(high, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            if self.high_norm is not None:
                high = _normalize(high, *self.high_norm)
            if self.low_norm is not None:
                low = _normalize(low, *self.low_norm)
        h = self.vision_tower_high(high).flatten(2).transpose(1, 2)
        lo = self.vision_tower_low(low)
        if h.shape[1] != lo.shape[1]:
            raise ValueError(f"SAM gives {h.shape[1]} tokens, SigLIP {lo.shape[1]}: the towers do not fit together")
        return self.aligner(h, lo)
