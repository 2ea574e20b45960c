"""Idefics3's VisionModel: the checkpoint's ``Idefics3ImageProcessor``, then SigLIP + connector.

Preprocessing is transformers' own image processor (without torchvision it is the PIL
implementation, ``Idefics3ImageProcessorPil``): resize to ``size.longest_edge``, resize up to
multiples of ``max_image_size``, cut ``rows x cols`` tiles, add the whole image resized to one
tile (the global image), normalize, pad, and give the ``pixel_attention_mask``. Per-image
options: ``do_image_splitting`` (bool) and ``longest_edge`` (int, the processor's
``size.longest_edge``).

An image fills ``tiles * image_seq_len`` positions (``tiles = rows * cols + 1`` when split, else
1); ``image_seq_len = (image_size / patch_size)**2 / scale_factor**2``, as ``Idefics3Model``
computes it. ``forward`` returns each image's tiles' embeddings in processor order: tiles
row-major, then the global image -- the order the prompt's ``<image>`` runs appear in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ImageItem, VisionModel, WeightLoadError, read_tensors

VISION_PREFIXES = ("model.vision_model.", "model.connector.")
OPTIONS = ("do_image_splitting", "longest_edge")
_MAX_TILES_PER_FORWARD = 64
# Idefics3VisionConfig's defaults, for keys a config.json leaves out
VISION_DEFAULTS = {
    "hidden_size": 1152, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 16,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}


class Idefics3ConfigError(ValueError):
    """The checkpoint's config does not describe an Idefics3 vision side vlkit can build."""


class Idefics3VisionModel(VisionModel):
    """Vision side of ``Idefics3ForConditionalGeneration`` (tower + connector only)."""

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        vision = {**VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
        text = hf_config.get("text_config") or {}
        if "hidden_size" not in text:
            raise Idefics3ConfigError(f"{self.model_path}/config.json: text_config lacks hidden_size")
        self.vision_config = vision
        self.scale_factor = int(hf_config.get("scale_factor", 2))
        self.lm_hidden = int(text["hidden_size"])
        side = int(vision["image_size"]) // int(vision["patch_size"])
        if side % self.scale_factor:
            raise Idefics3ConfigError(f"{side}x{side} patches per tile do not pixel-shuffle by scale_factor "
                                      f"{self.scale_factor}")
        self.image_seq_len = int(side**2 / self.scale_factor**2)

    # -- building ----------------------------------------------------------------------------
    def build_preprocessor(self) -> Any:
        from transformers import AutoImageProcessor
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the no-torchvision fallback notice
        try:
            self.preprocessor = AutoImageProcessor.from_pretrained(str(self.model_path))
        finally:
            hf_logging.set_verbosity(verbosity)
        tile = int((getattr(self.preprocessor, "max_image_size", None) or {}).get("longest_edge", 0))
        if tile != int(self.vision_config["image_size"]):
            raise Idefics3ConfigError(
                f"the image processor cuts {tile} px tiles (max_image_size) but the vision tower takes "
                f"{self.vision_config['image_size']} px"
            )
        return self.preprocessor

    def build_model(self) -> Any:
        from accelerate import init_empty_weights

        from vlkit_plugin_idefics3.modeling import Idefics3Vision

        with init_empty_weights():
            module = Idefics3Vision(self.vision_config, self.scale_factor, self.lm_hidden)

        def select(name: str) -> str | None:
            return name[len("model."):] if name.startswith(VISION_PREFIXES) else None

        tensors = read_tensors(self.model_path, select)
        self.model = self.load_weights(module, tensors, error=WeightLoadError, name_of=lambda k: f"model.{k}",
                                       what="Idefics3 vision tower + connector", strict=True)
        return self.model

    # -- preprocessing -----------------------------------------------------------------------
    def _kwargs(self, index: int, opts: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(opts) - set(OPTIONS))
        if bad:
            raise ValueError(f"image {index}: Idefics3 takes the per-image options {list(OPTIONS)}, got {bad}")
        kwargs: dict[str, Any] = {}
        if "do_image_splitting" in opts:
            if not isinstance(opts["do_image_splitting"], bool):
                raise ValueError(f"image {index}: do_image_splitting must be a bool, got {opts['do_image_splitting']!r}")
            kwargs["do_image_splitting"] = opts["do_image_splitting"]
        if "longest_edge" in opts:
            edge = opts["longest_edge"]
            if isinstance(edge, bool) or not isinstance(edge, int) or edge <= 0:
                raise ValueError(f"image {index}: longest_edge must be a positive int, got {edge!r}")
            kwargs["size"] = {"longest_edge": edge}
        return kwargs

    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        import torch

        if self.preprocessor is None:
            self.build_preprocessor()
        items = []
        for i, (img, opts) in enumerate(zip(images, options)):
            out = self.preprocessor(images=[[img]], return_tensors="pt", return_row_col_info=True, **self._kwargs(i, opts))
            rows, cols = int(out["rows"][0][0]), int(out["cols"][0][0])
            tiles = rows * cols + 1 if rows or cols else 1
            pixels = torch.as_tensor(out["pixel_values"][0])
            if pixels.shape[0] != tiles:
                raise RuntimeError(f"the image processor made {pixels.shape[0]} sub-images for a {rows}x{cols} grid")
            mask = out.get("pixel_attention_mask")
            data = {"pixel_values": pixels}
            if mask is not None:
                mask = torch.as_tensor(mask[0]).bool()
                if not bool(mask.all()):
                    data["pixel_attention_mask"] = mask
            meta = {"rows": rows, "cols": cols, "image_seq_len": self.image_seq_len}
            items.append(ImageItem(num_tokens=tiles * self.image_seq_len, data=data, options=dict(opts), meta=meta,
                                   num_tiles=tiles))
        return items

    # -- encoding ----------------------------------------------------------------------------
    def forward(self, items: list[ImageItem]) -> list[Any]:
        import torch

        if self.model is None:
            raise RuntimeError("Idefics3VisionModel.forward before build_model()")
        p = next(self.model.parameters())
        shapes = {tuple(it.data["pixel_values"].shape[-2:]) for it in items}
        if len(shapes) > 1:  # tiles of one size batch together; otherwise image by image
            return [f for it in items for f in self.forward([it])]
        pixels = torch.cat([it.data["pixel_values"] for it in items]).to(device=p.device, dtype=p.dtype)
        masks = None
        if any("pixel_attention_mask" in it.data for it in items):
            masks = torch.cat([
                it.data["pixel_attention_mask"] if "pixel_attention_mask" in it.data
                else torch.ones(it.data["pixel_values"].shape[0], *it.data["pixel_values"].shape[-2:], dtype=torch.bool)
                for it in items
            ]).to(p.device)
        with torch.inference_mode():
            feats = torch.cat([
                self.model(pixels[i:i + _MAX_TILES_PER_FORWARD],
                           None if masks is None else masks[i:i + _MAX_TILES_PER_FORWARD])
                for i in range(0, pixels.shape[0], _MAX_TILES_PER_FORWARD)
            ])
        out, k = [], 0
        for it in items:
            n = it.data["pixel_values"].shape[0]
            f = feats[k:k + n].reshape(-1, feats.shape[-1])
            k += n
            if f.shape[0] != it.num_tokens:
                raise RuntimeError(f"encoded {f.shape[0]} image embeddings, preprocess counted {it.num_tokens}")
            out.append(f)
        return out
