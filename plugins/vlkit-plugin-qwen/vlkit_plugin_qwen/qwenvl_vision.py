"""Qwen-VL-Chat's vision side: a 448 px ViT and a 256-query cross-attention resampler.

Written from the published model's description (see the README for what could and could not
be checked against the original code). Weights under ``transformer.visual.``:

* ``conv1`` (patch embedding, no bias), ``positional_embedding`` ``[P, width]`` (a square
  table, resized bicubically to the patch grid when the sizes differ), ``ln_pre``;
* ``transformer.resblocks.N.{ln_1, attn.in_proj, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``:
  pre-norm blocks, exact GELU, LayerNorm eps 1e-6; ``in_proj`` output laid out per head as
  ``[head][q, k, v]``;
* ``attn_pool``: ``query`` ``[Q, out]``, fixed 2-D sin-cos ``pos_embed`` ``[Q, out]``,
  ``kv_proj`` (no bias, when ``width != output_dim``), ``ln_q``, ``ln_kv``, a
  ``torch.nn.MultiheadAttention`` (``in_proj_weight`` as ``[Wq; Wk; Wv]`` blocks,
  ``output_dim // 128`` heads): queries ``ln_q(query) + pos_embed``, keys
  ``ln_kv(kv_proj(x)) + pos_embed`` resized to the patch grid, values ``ln_kv(kv_proj(x))``;
* ``ln_post``, then ``x @ proj``.

Images are resized bicubically to ``image_size`` × ``image_size`` (aspect ratio not kept) and
normalised with CLIP's mean / std; each gives ``Q`` (256) tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from vlkit.plugin import ImageItem, VisionModel, read_tensors

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREFIX = "transformer.visual."


def resize_table(table: torch.Tensor, n: int) -> torch.Tensor:
    """A square ``[S*S, C]`` position table resized bicubically to ``[n, C]`` (n a square)."""
    src, tgt = int(math.isqrt(table.shape[0])), int(math.isqrt(n))
    if src == tgt:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(tgt * tgt, -1).to(table.dtype)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, W]
        b, n, w = x.shape
        d = w // self.heads
        qkv = self.in_proj(x).view(b, n, self.heads, 3, d)  # per head: [q, k, v]
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # [B, H, L, d]
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(o.transpose(1, 2).reshape(b, n, w))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, mlp_width), "c_proj": nn.Linear(mlp_width, width)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        h = self.mlp["c_proj"](F.gelu(self.mlp["c_fc"](self.ln_2(x))))
        return x + h


class _Resampler(nn.Module):
    def __init__(self, queries: int, out_dim: int, heads: int, kv_dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(queries, out_dim))
        self.pos_embed = nn.Parameter(torch.empty(queries, out_dim), requires_grad=False)
        self.kv_proj = nn.Linear(kv_dim, out_dim, bias=False) if kv_dim != out_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(out_dim, heads)
        self.ln_q = nn.LayerNorm(out_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(out_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, kv_dim] -> [B, Q, out]
        kv = self.ln_kv(self.kv_proj(x)).transpose(0, 1)  # [L, B, E]
        pos_k = resize_table(self.pos_embed, x.shape[1]).unsqueeze(1)
        q = (self.ln_q(self.query) + self.pos_embed).unsqueeze(1).expand(-1, x.shape[0], -1)
        out = self.attn(q, kv + pos_k, kv, need_weights=False)[0]
        return out.transpose(0, 1)


class QwenVLVisual(nn.Module):
    """``transformer.visual`` of Qwen-VL-Chat (names as in the checkpoint, prefix dropped)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        width, heads, layers = int(cfg["width"]), int(cfg["heads"]), int(cfg["layers"])
        self.image_size, self.patch_size = int(cfg.get("image_size", 448)), int(cfg.get("patch_size", 14))
        out = int(cfg["output_dim"])
        queries = int(cfg.get("n_queries", 256))
        table = int(cfg.get("pos_table_size", 256))
        mlp_width = int(width * float(cfg["mlp_ratio"]))
        self.conv1 = nn.Conv2d(3, width, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        self.positional_embedding = nn.Parameter(torch.empty(table, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-6)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(_Block(width, heads, mlp_width) for _ in range(layers))
        self.attn_pool = _Resampler(queries, out, max(1, out // 128), width)
        self.ln_post = nn.LayerNorm(out, eps=1e-6)
        self.proj = nn.Parameter(torch.empty(out, out))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, 3, S, S] -> [B, Q, out]
        x = self.conv1(pixels.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, L, width]
        x = x + resize_table(self.positional_embedding, x.shape[1])
        x = self.ln_pre(x)
        for blk in self.transformer.resblocks:
            x = blk(x)
        x = self.attn_pool(x)
        return self.ln_post(x) @ self.proj


def to_pixels(image: Any, size: int) -> torch.Tensor:
    """Bicubic resize to ``size`` × ``size``, ``[0, 1]``, CLIP normalisation: ``[3, size, size]``."""
    import numpy as np
    from PIL import Image

    img = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


class QwenVLChatVisionModel(VisionModel):
    """Qwen-VL-Chat: one ``[256, hidden]`` tensor per image."""

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        self.visual_config = dict(hf_config.get("visual") or {})
        if not self.visual_config:
            raise ValueError(f"{model_path}/config.json has no 'visual' section (not a Qwen-VL checkpoint?)")
        self.image_size = int(self.visual_config.get("image_size", 448))
        self.num_queries = int(self.visual_config.get("n_queries", 256))

    def build_preprocessor(self) -> Any:
        self.preprocessor = {"size": self.image_size}
        return self.preprocessor

    def build_model(self) -> Any:
        from accelerate import init_empty_weights

        with init_empty_weights():
            module = QwenVLVisual(self.visual_config)
        raw = read_tensors(self.model_path, lambda n: n.startswith(PREFIX))
        tensors = {k[len(PREFIX):]: v for k, v in raw.items()}
        self.model = self.load_weights(module, tensors, name_of=lambda k: PREFIX + k)
        return self.model

    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        items = []
        for i, (img, opts) in enumerate(zip(images, options)):
            unknown = sorted(set(opts) - {"detail"})
            if unknown:
                raise ValueError(f"image {i}: Qwen-VL-Chat takes no image options, got {unknown}")
            items.append(ImageItem(num_tokens=self.num_queries, data={"pixel_values": to_pixels(img, self.image_size)}))
        return items

    def forward(self, items: list[ImageItem]) -> list[torch.Tensor]:
        if not items:
            return []
        px = torch.stack([it.data["pixel_values"] for it in items]).to(self.device)
        with torch.inference_mode():
            out = self.model(px)
        return list(out.unbind(0))
