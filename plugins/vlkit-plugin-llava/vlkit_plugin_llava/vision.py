"""LLaVA's VisionModel: CLIP tower + projector (+ anyres packing), for all three layouts.

Preprocessing:

* transformers layouts use the checkpoint's own image processor (``CLIPImageProcessor`` for
  llava-hf 1.5: resize shortest edge + centre crop, no padding; ``LlavaNextImageProcessor``
  for NeXT);
* the original layout reproduces LLaVA's ``mm_utils.process_images`` with the tower's
  ``CLIPImageProcessor``: ``pad`` (1.5) pads to a square with the processor's mean colour
  first; ``anyres`` (1.6) resizes (bicubic) into the best pinpoint, pastes it centred on a
  black canvas, cuts tiles, and adds the whole image squashed to the tower's size (no pad) as
  the base tile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlkit.plugin import (
    ImageItem,
    VisionModel,
    clip_image_processor,
    clip_vision_config,
    crop_size,
    expand_to_square,
    read_tensors,
    resolve_tower,
    tensor_names,
)
from vlkit_plugin_llava import anyres
from vlkit_plugin_llava.layout import LlavaConfigError, LlavaLayout, layout_from_config, projector_depth

# where each layout keeps its tensors: (checkpoint prefix, module prefix), first match wins
_HF_RULES = (
    ("model.vision_tower.vision_model.", "tower."),
    ("model.vision_tower.", "tower."),
    ("vision_tower.vision_model.", "tower."),
    ("vision_tower.", "tower."),
    ("model.multi_modal_projector.linear_1.", "projector.layers.0."),
    ("model.multi_modal_projector.linear_2.", "projector.layers.2."),
    ("multi_modal_projector.linear_1.", "projector.layers.0."),
    ("multi_modal_projector.linear_2.", "projector.layers.2."),
    ("model.image_newline", "image_newline"),
    ("image_newline", "image_newline"),
)
_ORIGINAL_RULES = (
    ("model.mm_projector.", "projector.layers."),
    ("model.image_newline", "image_newline"),
)
_ORIGINAL_TOWER_IN_CKPT = "model.vision_tower.vision_tower."
_TOWER_RULES = (("vision_model.", "tower."), ("", "tower."))

_MAX_TILES_PER_FORWARD = 64


class LlavaWeightError(ValueError):
    """The checkpoint lacks vision tensors or has them in the wrong shape."""


class LlavaVisionModel(VisionModel):
    """Vision side of LLaVA-1.5, LLaVA-NeXT and the original ``LlavaLlamaForCausalLM``."""

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        self.layout: LlavaLayout = layout_from_config(hf_config)
        if self.layout.anyres and self.layout.merge != "flat" and not self.layout.drop_cls:
            raise LlavaConfigError("anyres spatial packing needs the CLS position dropped (strategy 'default'/'patch')")
        self.tower_dir: Path | None = None
        if self.layout.kind == "original":
            self.tower_dir = resolve_tower(self.layout.vision_tower or "", self.model_path)
            self.tower_config = clip_vision_config(
                json.loads((self.tower_dir / "config.json").read_text()), f"{self.tower_dir}/config.json", LlavaConfigError
            )
        else:
            self.tower_config = clip_vision_config(dict(hf_config.get("vision_config") or {}), "config.json vision_config",
                                                   LlavaConfigError)
        self.image_size = int(self.tower_config["image_size"])
        self.patch_size = int(self.tower_config["patch_size"])

    # -- building ----------------------------------------------------------------------------
    def build_preprocessor(self) -> Any:
        if self.layout.kind == "original":
            self.preprocessor = clip_image_processor(self.tower_dir)
        else:
            from transformers import AutoImageProcessor

            self.preprocessor = AutoImageProcessor.from_pretrained(str(self.model_path), trust_remote_code=False)
        crop = crop_size(self.preprocessor)
        if crop != self.image_size:
            raise LlavaConfigError(
                f"the image processor crops to {crop} px but the vision tower takes {self.image_size} px"
            )
        return self.preprocessor

    def build_model(self) -> Any:
        from accelerate import init_empty_weights

        from vlkit_plugin_llava.modeling import LlavaVision

        lay = self.layout
        with init_empty_weights():
            module = LlavaVision(
                self.tower_config, lay.feature_layers, lay.drop_cls, lay.lm_hidden,
                projector_depth(lay.projector), lay.projector_act, lay.projector_bias, lay.newline,
            )
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        tensors = self._read_weights(expected)
        self.model = self.load_weights(module, tensors, error=LlavaWeightError).fuse()
        return self.model

    def _read_weights(self, expected: dict[str, tuple]) -> dict[str, Any]:
        def selector(rules: tuple[tuple[str, str], ...]) -> Any:
            def select(name: str) -> str | None:
                for src, dst in rules:
                    if name.startswith(src):
                        new = dst + name[len(src):]
                        if new in expected:
                            return new
                return None
            return select

        if self.layout.kind != "original":
            return read_tensors(self.model_path, selector(_HF_RULES))
        out = read_tensors(self.model_path, selector(_ORIGINAL_RULES))
        if self.layout.tower_in_checkpoint and any(
            n.startswith(_ORIGINAL_TOWER_IN_CKPT) for n in tensor_names(self.model_path)
        ):
            # LLaVA-1.6 fine-tuned its tower; the checkpoint's copy overrides mm_vision_tower's
            rules = tuple((_ORIGINAL_TOWER_IN_CKPT + s, d) for s, d in _TOWER_RULES)
            out.update(read_tensors(self.model_path, selector(rules)))
        else:
            assert self.tower_dir is not None
            out.update(read_tensors(self.tower_dir, selector(_TOWER_RULES)))
        return out

    # -- preprocessing -----------------------------------------------------------------------
    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        for i, opts in enumerate(options):
            if opts:
                raise ValueError(f"image {i}: LLaVA takes no per-image options, got {sorted(opts)}")
        if self.preprocessor is None:
            self.build_preprocessor()
        if self.layout.kind == "original":
            pixels = [self._original_pixels(img) for img in images]
        else:
            pixels = self._hf_pixels(images)
        items = []
        for img, px, opts in zip(images, pixels, options):
            w, h = img.size
            n, meta = anyres.num_image_tokens(self.layout, h, w, self.image_size, self.patch_size)
            if px.shape[0] != meta["tiles"]:
                raise RuntimeError(f"the image processor made {px.shape[0]} tiles, anyres expects {meta['tiles']}")
            meta["image_size"] = (h, w)
            items.append(ImageItem(num_tokens=n, data={"pixel_values": px, "image_size": (h, w)}, options=dict(opts), meta=meta))
        return items

    def _hf_pixels(self, images: list[Any]) -> list[Any]:
        import torch

        out = self.preprocessor(images=images, return_tensors="pt")
        pv = out["pixel_values"]
        if self.layout.anyres:
            # [N, max_tiles, 3, H, W], zero-padded on the tile axis: keep each image's own tiles
            res = []
            for i, img in enumerate(images):
                w, h = img.size
                rows, cols = anyres.grid_shape(h, w, self.layout, self.image_size)
                res.append(torch.as_tensor(pv[i][: 1 + rows * cols]))
            return res
        return [torch.as_tensor(pv[i : i + 1]) for i in range(len(images))]

    def _original_pixels(self, image: Any) -> Any:
        import torch
        from PIL import Image

        proc = self.preprocessor

        def pixels(img: Any) -> Any:
            return torch.as_tensor(proc.preprocess(img, return_tensors="pt")["pixel_values"][0])

        if self.layout.image_mode == "pad":
            return pixels(expand_to_square(image, tuple(int(x * 255) for x in proc.image_mean))).unsqueeze(0)
        if self.layout.image_mode == "crop":
            return pixels(image).unsqueeze(0)
        # anyres, as LLaVA's process_anyres_image
        w, h = image.size
        best_h, best_w = anyres.select_best_resolution(h, w, self.layout.pinpoints)
        new_h, new_w = anyres.fit_size(h, w, best_h, best_w)
        canvas = Image.new("RGB", (best_w, best_h), (0, 0, 0))
        canvas.paste(image.resize((new_w, new_h), Image.BICUBIC), ((best_w - new_w) // 2, (best_h - new_h) // 2))
        tile = int(proc.crop_size["height"])
        tiles = [
            canvas.crop((x, y, x + tile, y + tile)) for y in range(0, best_h, tile) for x in range(0, best_w, tile)
        ]
        side = int(proc.size["shortest_edge"])
        base = image.resize((side, side), Image.BICUBIC)
        return torch.stack([pixels(t) for t in [base] + tiles])

    # -- encoding ----------------------------------------------------------------------------
    def forward(self, items: list[ImageItem]) -> list[Any]:
        import torch

        if self.model is None:
            raise RuntimeError("LlavaVisionModel.forward before build_model()")
        p = next(self.model.parameters())
        pixels = torch.cat([it.data["pixel_values"] for it in items]).to(device=p.device, dtype=p.dtype)
        with torch.inference_mode():
            feats = torch.cat([
                self.model(pixels[i : i + _MAX_TILES_PER_FORWARD])
                for i in range(0, pixels.shape[0], _MAX_TILES_PER_FORWARD)
            ])
            out, k = [], 0
            for it in items:
                n = it.data["pixel_values"].shape[0]
                out.append(self._pack(feats[k : k + n], it))
                k += n
        for it, f in zip(items, out):
            if f.shape[0] != it.num_tokens:
                raise RuntimeError(f"packed {f.shape[0]} image embeddings, preprocess counted {it.num_tokens}")
        return out

    def _pack(self, feats: Any, item: ImageItem) -> Any:
        """``[tiles, tokens_per_tile, D]`` -> ``[num_tokens, D]`` (anyres: base, then the grid)."""
        import torch

        lay = self.layout
        if not lay.anyres or lay.merge == "flat":
            return feats.flatten(0, 1)
        rows, cols = item.meta["grid"]
        side = self.image_size // self.patch_size
        d = feats.shape[-1]
        grid = feats[1:].view(rows, cols, side, side, d).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, d)
        if lay.merge == "spatial_unpad":
            h, w = item.data["image_size"]
            top, bottom, left, right = anyres.unpad_bounds(h, w, rows * side, cols * side, lay.unpad_rounding)
            grid = grid[top:bottom, left:right]
            if lay.newline:
                nl = self.model.image_newline.to(grid.dtype).expand(grid.shape[0], 1, d)
                grid = torch.cat([grid, nl], dim=1)
        return torch.cat([feats[0], grid.reshape(-1, d)])
