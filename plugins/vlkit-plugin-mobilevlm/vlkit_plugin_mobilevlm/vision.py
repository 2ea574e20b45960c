"""MobileVLM's VisionModel: CLIP tower (layer -2, CLS dropped) + LDP / LDPv2 projector.

Preprocessing reproduces the MobileVLM repository's ``mobilevlm.utils.process_images``: with
``image_aspect_ratio: "pad"`` the image is pasted centred on a square of its longer side filled
with the processor's mean colour (``expand2square``), then the tower's ``CLIPImageProcessor``
(transformers' PIL implementation, as the original ran) resizes and centre-crops it.

Weights: the tower's tensors come from the checkpoint (``model.vision_tower.vision_tower.
vision_model.*``, carried by every released MobileVLM) when present, else from the
``mm_vision_tower`` checkpoint; the tower's config and image processor always come from
``mm_vision_tower`` (as in the original). When the checkpoint carries the tower, a hub id is
fetched without its weights.
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
from vlkit_plugin_mobilevlm.layout import MobileVLMConfigError, MobileVLMLayout, layout_from_config

TOWER_IN_CHECKPOINT = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."


class MobileVLMWeightError(ValueError):
    """The checkpoint lacks vision tensors or has them in the wrong shape."""


class MobileVLMVisionModel(VisionModel):
    """Vision side of ``MobileLlamaForCausalLM`` (MobileVLM V1 ``ldpnet``, V2 ``ldpnetv2``)."""

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        self.layout: MobileVLMLayout = layout_from_config(hf_config)
        names = tensor_names(self.model_path)
        self.tower_in_checkpoint = any(n.startswith(TOWER_IN_CHECKPOINT) for n in names)
        self.tower_dir = resolve_tower(self.layout.vision_tower, self.model_path, need_weights=not self.tower_in_checkpoint)
        cfg_file = self.tower_dir / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"mm_vision_tower {self.layout.vision_tower!r}: no config.json in {self.tower_dir}")
        self.tower_config = clip_vision_config(json.loads(cfg_file.read_text()), str(cfg_file), MobileVLMConfigError)
        if int(self.tower_config["hidden_size"]) != self.layout.mm_hidden:
            raise MobileVLMConfigError(
                f"config.json mm_hidden_size {self.layout.mm_hidden} != the tower's hidden_size "
                f"{self.tower_config['hidden_size']}"
            )
        self.image_size = int(self.tower_config["image_size"])
        self.grid = self.image_size // int(self.tower_config["patch_size"])
        self.num_tokens = self.layout.num_tokens(self.grid)

    # -- building ----------------------------------------------------------------------------
    def build_preprocessor(self) -> Any:
        proc = clip_image_processor(self.tower_dir)
        crop = crop_size(proc)
        if crop != self.image_size:
            raise MobileVLMConfigError(
                f"the image processor of {self.tower_dir} crops to {crop} px but the tower takes {self.image_size} px"
            )
        self.preprocessor = proc
        self._fill = tuple(int(x * 255) for x in proc.image_mean)
        return proc

    def build_model(self) -> Any:
        from accelerate import init_empty_weights

        from vlkit_plugin_mobilevlm.modeling import MobileVLMVision

        lay = self.layout
        with init_empty_weights():
            module = MobileVLMVision(self.tower_config, lay.select_layer, lay.drop_cls, lay.projector, lay.lm_hidden)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        tensors = self._read_weights(set(expected))
        self.model = self.load_weights(module, tensors, error=MobileVLMWeightError,
                                       name_of=lambda k: _original_name(k, self)).fuse()
        return self.model

    def _read_weights(self, expected: set[str]) -> dict[str, Any]:
        def rule(src: str, dst: str) -> Any:
            def select(name: str) -> str | None:
                if name.startswith(src):
                    new = dst + name[len(src):]
                    return new if new in expected else None
                return None
            return select

        out = read_tensors(self.model_path, rule(PROJECTOR_PREFIX, "projector."))
        if self.tower_in_checkpoint:
            out.update(read_tensors(self.model_path, rule(TOWER_IN_CHECKPOINT + "vision_model.", "tower.")))
        else:
            out.update(read_tensors(self.tower_dir, rule("vision_model.", "tower.")))
        return out

    # -- preprocessing -----------------------------------------------------------------------
    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        import torch

        for i, opts in enumerate(options):
            if opts:
                raise ValueError(f"image {i}: MobileVLM takes no per-image options, got {sorted(opts)}")
        if self.preprocessor is None:
            self.build_preprocessor()
        if self.layout.pad_to_square:
            images = [expand_to_square(img, self._fill) for img in images]
        pixels = torch.as_tensor(self.preprocessor(images=images, return_tensors="pt")["pixel_values"])
        return [
            ImageItem(num_tokens=self.num_tokens, data={"pixel_values": pixels[i]}, options=dict(opts))
            for i, opts in enumerate(options)
        ]

    # -- encoding ----------------------------------------------------------------------------
    def forward(self, items: list[ImageItem]) -> list[Any]:
        import torch

        if self.model is None:
            raise RuntimeError("MobileVLMVisionModel.forward before build_model()")
        p = next(self.model.parameters())
        with torch.inference_mode():
            pixels = torch.stack([it.data["pixel_values"] for it in items]).to(device=p.device, dtype=p.dtype)
            feats = self.model(pixels)
        if feats.shape[1] != self.num_tokens:
            raise RuntimeError(f"the projector made {feats.shape[1]} tokens per image, expected {self.num_tokens}")
        return list(feats.unbind(0))


def _original_name(name: str, vm: MobileVLMVisionModel) -> str:
    if name.startswith("projector."):
        return PROJECTOR_PREFIX + name[len("projector."):]
    rest = "vision_model." + name[len("tower."):]
    return TOWER_IN_CHECKPOINT + rest if vm.tower_in_checkpoint else f"{rest} (in {vm.tower_dir})"
