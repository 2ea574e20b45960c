"""DeepSeek-VL's VisionModel, for the three layouts.

Preprocessing:

* transformers layouts: the checkpoint's own image processor (``DeepseekVLImageProcessor``:
  longest side to ``size`` with the short side *rounded*, padded to a square, normalised;
  ``DeepseekVLHybridImageProcessor`` also makes ``high_res_pixel_values``);
* the original layout: :func:`original_pixels`, the original ``VLMImageProcessor`` — longest
  side to ``image_size`` with PIL bicubic, short side *truncated* (``int``) with a floor of
  ``min_size``, centred on a square of ``int(mean * 255)`` per channel (127 grey without a
  mean), rescaled, normalised when ``do_normalize``. In the 7b the processor works at SAM's
  1024 px without normalising; the model itself makes SigLIP's 384 px input (antialiased
  bilinear) and each tower normalises its input (:class:`~.modeling.HybridVision`).

Every image gives the same number of tokens: (image_size / patch)² for SigLIP alone, 576 for
the hybrid (SAM's features are resized to 96 x 96 and downsampled twice).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlkit.plugin import ImageItem, VisionModel, read_tensors
from vlkit_plugin_deepseek.layout import (
    DeepseekConfigError,
    VisionLayout,
    build_vision,
    fuse_qkv,
    layout_from_config,
    rename,
)

_CHUNK = 32  # images per tower forward


class DeepseekWeightError(ValueError):
    """The checkpoint lacks vision tensors or has them in another shape; names the first ones."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise DeepseekConfigError(f"{path} is not valid JSON: {exc}") from exc


class OriginalImageProcessor:
    """The original repository's ``VLMImageProcessor`` (``preprocessor_config.json``)."""

    def __init__(self, image_size: int, min_size: int = 14, image_mean: Any = (0.48145466, 0.4578275, 0.40821073),
                 image_std: Any = (0.26862954, 0.26130258, 0.27577711), rescale_factor: float = 1 / 255,
                 do_normalize: bool = True, **_: Any) -> None:
        self.image_size, self.min_size = int(image_size), int(min_size)
        self.image_mean = list(image_mean) if image_mean is not None else None
        self.image_std = list(image_std) if image_std is not None else None
        self.rescale_factor, self.do_normalize = float(rescale_factor), bool(do_normalize)
        self.background_color = (
            tuple(int(x * 255) for x in self.image_mean) if self.image_mean is not None else (127, 127, 127)
        )

    @classmethod
    def from_pretrained(cls, path: Path) -> OriginalImageProcessor:
        cfg = _read_json(Path(path) / "preprocessor_config.json")
        if "image_size" not in cfg:
            raise DeepseekConfigError(f"{path}/preprocessor_config.json has no image_size")
        return cls(**cfg)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(new_width, new_height)``: longest side to ``image_size``, truncated, floor ``min_size``."""
        longest = max(width, height)
        return (max(int(width / longest * self.image_size), self.min_size),
                max(int(height / longest * self.image_size), self.min_size))

    def __call__(self, image: Any) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        w, h = image.size
        if w <= 0 or h <= 0:
            raise ValueError(f"invalid image size {image.size}")
        nw, nh = self.resized_size(w, h)
        img = image.resize((nw, nh), Image.BICUBIC)
        side = max(nw, nh)
        if nw != nh:
            canvas = Image.new(img.mode, (side, side), self.background_color)
            canvas.paste(img, ((side - nw) // 2, (side - nh) // 2))
            img = canvas
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        x = (x.double() * self.rescale_factor).float()
        if self.do_normalize and self.image_mean is not None:
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(-1, 1, 1)
            x = (x - mean) / std
        return x


def _hf_image_processor(path: Path, hybrid: bool) -> Any:
    import transformers

    try:
        import torchvision  # noqa: F401

        return transformers.AutoImageProcessor.from_pretrained(str(path), trust_remote_code=False)
    except ImportError:
        cls = transformers.DeepseekVLHybridImageProcessorPil if hybrid else transformers.DeepseekVLImageProcessorPil
        return cls.from_pretrained(str(path))


class DeepseekVisionModel(VisionModel):
    """Vision side of DeepSeek-VL 1.3b / 7b in any of the three layouts."""

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        self.layout: VisionLayout = layout_from_config(hf_config)
        self.num_tokens = self.layout.num_tokens
        if self.layout.kind == "original":
            declared = _read_json(self.model_path / "processor_config.json").get("num_image_tokens")
            if declared is not None and int(declared) != self.num_tokens:
                raise DeepseekConfigError(
                    f"processor_config.json num_image_tokens={declared} but the vision tower gives {self.num_tokens}"
                )

    # -- building ----------------------------------------------------------------------------
    def build_preprocessor(self) -> Any:
        lay = self.layout
        if lay.kind == "original":
            proc = OriginalImageProcessor.from_pretrained(self.model_path)
            want = (lay.high or lay.low).image_size
            if proc.image_size != want:
                raise DeepseekConfigError(
                    f"preprocessor_config.json image_size {proc.image_size} != the vision tower's {want}"
                )
        else:
            proc = _hf_image_processor(self.model_path, lay.hybrid)
        self.preprocessor = proc
        return proc

    def build_model(self) -> Any:
        from accelerate import init_empty_weights

        with init_empty_weights():
            module = build_vision(self.layout)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        kind = self.layout.kind

        def select(name: str) -> str | None:
            new = rename(kind, name)
            if new is None:
                return None
            base = new.rsplit(".", 2)
            # q/k/v of transformers' SigLIP are kept for fusing
            if len(base) == 3 and base[1] in ("q", "k", "v") and f"{base[0]}.qkv.{base[2]}" in expected:
                return new
            return new if new in expected else None

        tensors = fuse_qkv(read_tensors(self.model_path, select))
        self.model = self.load_weights(module, tensors, error=DeepseekWeightError,
                                       what=f"vision weights ({kind} layout)")
        return self.model

    # -- preprocessing -----------------------------------------------------------------------
    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        import torch

        for i, opts in enumerate(options):
            if opts:
                raise ValueError(f"image {i}: DeepSeek-VL takes no per-image options, got {sorted(opts)}")
        if self.preprocessor is None:
            self.build_preprocessor()
        items = []
        if self.layout.kind == "original":
            for img in images:
                items.append(ImageItem(self.num_tokens, {"pixel_values": self.preprocessor(img)}))
            return items
        out = self.preprocessor(images=images, return_tensors="pt")
        for i in range(len(images)):
            data = {"pixel_values": torch.as_tensor(out["pixel_values"][i])}
            if self.layout.hybrid:
                data["high_res_pixel_values"] = torch.as_tensor(out["high_res_pixel_values"][i])
            items.append(ImageItem(self.num_tokens, data))
        return items

    # -- encoding ----------------------------------------------------------------------------
    def forward(self, items: list[ImageItem]) -> list[Any]:
        import torch

        if self.model is None:
            raise RuntimeError("DeepseekVisionModel.forward before build_model()")
        p = next(self.model.parameters())
        feats = []
        with torch.inference_mode():
            for s in range(0, len(items), _CHUNK):
                chunk = items[s : s + _CHUNK]
                px = torch.stack([it.data["pixel_values"] for it in chunk]).to(device=p.device, dtype=p.dtype)
                if self.layout.kind == "hf-hybrid":
                    hi = torch.stack([it.data["high_res_pixel_values"] for it in chunk]).to(device=p.device, dtype=p.dtype)
                    feats.append(self.model(hi, px))
                else:
                    feats.append(self.model(px))
        out = list(torch.cat(feats).unbind(0))
        for f in out:
            if f.shape[0] != self.num_tokens:
                raise RuntimeError(f"the vision side made {f.shape[0]} embeddings per image, expected {self.num_tokens}")
        return out
