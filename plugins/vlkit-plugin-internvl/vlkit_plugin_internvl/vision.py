"""InternVL's VisionModel, for the original ``InternVLChatModel`` layout and transformers' one.

Preprocessing, per image:

* original layout: the original's ``dynamic_preprocess`` (:mod:`vlkit_plugin_internvl.tiling`)
  with ``min_dynamic_patch`` / ``max_dynamic_patch`` / ``use_thumbnail`` from config.json (a
  checkpoint with ``dynamic_image_size: false`` gets one tile), then bicubic resize to the tile,
  ToTensor and ImageNet normalisation;
* transformers' layout: the checkpoint's image processor (``GotOcr2ImageProcessor``,
  ``crop_to_patches``), whose tiling is the same algorithm.

Per-image option ``max_dynamic_patch`` (as in lmdeploy: ``image_url: {url, max_dynamic_patch}``)
overrides the maximum tile count; ``min_dynamic_patch`` the minimum. Each tile gives
``(image_size / patch_size)² × downsample_ratio²`` tokens (256 for 448 px, patch 14, ratio 0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ImageItem, VisionModel, read_tensors
from vlkit_plugin_internvl import tiling, weights
from vlkit_plugin_internvl.layout import InternVLLayout, layout_from_config

OPTIONS = ("max_dynamic_patch", "min_dynamic_patch")
_MAX_TILES_PER_FORWARD = 64


class InternVLWeightError(ValueError):
    """The checkpoint lacks vision tensors or has them in the wrong shape."""


def _int_option(opts: dict[str, Any], key: str, index: int) -> int | None:
    v = opts.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"image {index}: {key} must be a positive integer, got {v!r}")
    return v


VIDEO_OPTIONS = ("num_segments", "num_frames", "bound", "max_dynamic_patch", "fps")
DEFAULT_SEGMENTS = 8


class InternVLVisionModel(VisionModel):
    """InternViT + pixel shuffle + ``mlp1``; one ``[tiles * tokens_per_tile, lm_hidden]`` per image
    (per video: its frames' tiles, in order)."""

    video_input = "frames"

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        self.layout: InternVLLayout = layout_from_config(hf_config)
        seq = hf_config.get("image_seq_length")
        if self.layout.kind == "hf" and seq is not None and int(seq) != self.layout.tokens_per_tile:
            raise ValueError(
                f"config.json image_seq_length {seq} does not match the vision tower "
                f"({self.layout.image_size} px / patch {self.layout.patch_size}, ratio "
                f"{self.layout.downsample_ratio} -> {self.layout.tokens_per_tile} tokens per tile)"
            )

    # -- building ----------------------------------------------------------------------------
    def build_preprocessor(self) -> Any:
        lay = self.layout
        if lay.kind == "original":
            self.preprocessor = {
                "tile": lay.image_size,
                "min": lay.min_dynamic_patch if lay.dynamic_image_size else 1,
                "max": lay.max_dynamic_patch if lay.dynamic_image_size else 1,
                "thumbnail": lay.use_thumbnail,
            }
            return self.preprocessor
        self.preprocessor = _hf_image_processor(self.model_path)
        size = self.preprocessor.size
        side = size["height"] if isinstance(size, dict) else size.height
        if int(side) != lay.image_size:
            raise ValueError(f"the image processor makes {side} px tiles but the vision tower takes {lay.image_size} px")
        return self.preprocessor

    def build_model(self) -> Any:
        from accelerate import init_empty_weights

        from vlkit_plugin_internvl.modeling import InternVLVision

        lay = self.layout
        with init_empty_weights():
            module = InternVLVision(lay)
        raw = read_tensors(self.model_path, weights.wanted_for(lay.kind, module.vision_model.num_used))
        tensors = weights.original_names(raw) if lay.kind == "original" else weights.hf_names(raw)
        self.model = self.load_weights(module, tensors, error=InternVLWeightError)
        return self.model

    # -- preprocessing -----------------------------------------------------------------------
    def tile_range(self, opts: dict[str, Any], index: int) -> tuple[int, int]:
        """``(min_tiles, max_tiles)`` for one image."""
        unknown = sorted(set(opts) - set(OPTIONS) - {"detail"})
        if unknown:
            raise ValueError(f"image {index}: unknown InternVL image option(s) {unknown}; accepted: {list(OPTIONS)}")
        lay = self.layout
        if lay.kind == "original":
            lo, hi = self.preprocessor["min"], self.preprocessor["max"]
        else:
            p = self.preprocessor
            lo, hi = int(getattr(p, "min_patches", 1)), int(getattr(p, "max_patches", 12))
            if not getattr(p, "crop_to_patches", False):
                lo = hi = 1
        hi_opt = _int_option(opts, "max_dynamic_patch", index)
        lo_opt = _int_option(opts, "min_dynamic_patch", index)
        if hi_opt is None and opts.get("detail") in ("low", "medium", "high"):
            hi_opt = {"low": 6, "medium": 12, "high": 24}[opts["detail"]]  # lmdeploy's reading of `detail`
        hi = hi_opt if hi_opt is not None else hi
        lo = lo_opt if lo_opt is not None else min(lo, hi)
        if lo > hi:
            raise ValueError(f"image {index}: min_dynamic_patch {lo} > max_dynamic_patch {hi}")
        return lo, hi

    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        if self.preprocessor is None:
            self.build_preprocessor()
        lay = self.layout
        items = []
        for i, (img, opts) in enumerate(zip(images, options)):
            lo, hi = self.tile_range(opts, i)
            if lay.kind == "original":
                tiles = tiling.tile_image(img, lay.image_size, lo, hi, self.preprocessor["thumbnail"])
                px = tiling.to_pixels(tiles, lay.image_size)
            else:
                px = self._hf_pixels(img, lo, hi)
            w, h = img.size
            cols, rows = tiling.choose_grid(w, h, lay.image_size, lo, hi)
            n_tiles = int(px.shape[0])
            items.append(ImageItem(
                num_tokens=n_tiles * lay.tokens_per_tile,
                data={"pixel_values": px},
                options=dict(opts),
                meta={"tiles": n_tiles, "grid": (cols, rows), "image_size": (h, w),
                      "tokens_per_tile": lay.tokens_per_tile},
            ))
        return items

    # -- video (as frames) ----------------------------------------------------------------------
    def _video_options(self, opts: dict[str, Any]) -> tuple[int, tuple[float, float] | None, int]:
        unknown = sorted(set(opts) - set(VIDEO_OPTIONS))
        if unknown:
            raise ValueError(f"unknown InternVL video option(s) {unknown}; accepted: {list(VIDEO_OPTIONS)}")
        segs = _int_option(opts, "num_segments", 0) or _int_option(opts, "num_frames", 0) or DEFAULT_SEGMENTS
        bound = opts.get("bound")
        if bound is not None:
            if (not isinstance(bound, (list, tuple)) or len(bound) != 2
                    or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bound)):
                raise ValueError(f"video option bound must be [start, end] in seconds, got {bound!r}")
            bound = (float(bound[0]), float(bound[1]))
        tiles = _int_option(opts, "max_dynamic_patch", 0) or 1
        return segs, bound, tiles

    def sample_video_frames(self, metadata: Any, options: dict[str, Any]) -> list[int]:
        """InternVL's ``load_video``: the middle frame of each of ``num_segments`` (default 8)
        equal segments of the clip (``bound``: ``[start, end]`` seconds)."""
        from vlkit_plugin_internvl.video import frame_indices

        segs, bound, _ = self._video_options(options)
        return frame_indices(int(metadata.total_frames), float(metadata.fps or 1.0), segs, bound)

    def preprocess_video(self, video: Any, options: dict[str, Any]) -> ImageItem:
        """Each frame as an image of ``max_dynamic_patch`` tiles (1: one 448 px tile, as the
        original video chat), the frames' tiles in one item; the chat template writes
        ``Frame{i}: <img>…</img>`` per frame."""
        import torch

        _, _, tiles = self._video_options(options)
        frames = self.preprocess(list(video.frames), [{"max_dynamic_patch": tiles}] * len(video.frames))
        per_frame = [it.num_tokens for it in frames]
        return ImageItem(
            num_tokens=sum(per_frame),
            data={"pixel_values": torch.cat([it.data["pixel_values"] for it in frames])},
            options=dict(options),
            meta={"kind": "video", "frames": len(frames), "frame_tokens": per_frame,
                  "tiles": sum(it.meta["tiles"] for it in frames), "tokens_per_tile": self.layout.tokens_per_tile},
            num_tiles=sum(it.meta["tiles"] for it in frames),
        )

    def _hf_pixels(self, image: Any, lo: int, hi: int) -> Any:
        import torch

        p = self.preprocessor
        out = p(images=[image], crop_to_patches=hi > 1, min_patches=lo, max_patches=hi, return_tensors="pt")
        return torch.as_tensor(out["pixel_values"])

    # -- encoding ----------------------------------------------------------------------------
    def forward(self, items: list[ImageItem]) -> list[Any]:
        import torch

        if self.model is None:
            raise RuntimeError("InternVLVisionModel.forward before build_model()")
        p = next(self.model.parameters())
        pixels = torch.cat([it.data["pixel_values"] for it in items]).to(device=p.device, dtype=p.dtype)
        with torch.inference_mode():
            feats = torch.cat([
                self.model(pixels[i:i + _MAX_TILES_PER_FORWARD])
                for i in range(0, pixels.shape[0], _MAX_TILES_PER_FORWARD)
            ])
        out, k = [], 0
        for it in items:
            n = it.data["pixel_values"].shape[0]
            out.append(feats[k:k + n].reshape(-1, feats.shape[-1]))
            k += n
        return out


def _hf_image_processor(path: Path) -> Any:
    """The checkpoint's image processor; the PIL backend when torchvision is missing."""
    import transformers

    try:
        import torchvision  # noqa: F401

        return transformers.AutoImageProcessor.from_pretrained(str(path), trust_remote_code=False)
    except ImportError:
        cls = getattr(transformers, "GotOcr2ImageProcessorPil", None)
        if cls is None:
            from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
                GotOcr2ImageProcessorPil as cls,
            )
        return cls.from_pretrained(str(path))
