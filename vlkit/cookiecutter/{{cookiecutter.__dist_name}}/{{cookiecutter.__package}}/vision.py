"""The VisionModel of the ``{{ cookiecutter._name }}`` family: a CLIP vision tower and an MLP projector.

As in LLaVA-1.5: the image is resized (shortest edge) and center-cropped by the checkpoint's
``CLIPImageProcessor``; the tower's features are taken from its second-to-last layer
(``vision_feature_layer: -2``), the CLS position is dropped, and a two-layer GELU MLP
(``mlp2x_gelu``) projects each patch feature to the language model's hidden size. One image
becomes ``(image_size / patch_size) ** 2`` embeddings.

Only the tower and the projector are built -- on ``accelerate.init_empty_weights()``, so no
memory is spent on random initialisation -- and only their tensors are read from the
checkpoint's safetensors; the language model stays in the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from vlkit.plugin import ImageItem, VisionModel, read_tensors

from {{ cookiecutter.__package }}.hooks import FAMILY

#: checkpoint tensor prefix -> module prefix; the first matching pair wins. The layouts
#: transformers has written all load: ``vision_tower.vision_model.*`` (llava-hf on the hub),
#: ``vision_tower.*`` (transformers 5's save_pretrained) and both under ``model.``; the tower
#: module itself is named as the installed transformers' ``CLIPVisionModel`` names it (with or
#: without ``vision_model.``).
WEIGHT_PREFIXES = (
    ("model.vision_tower.vision_model.", "tower."),
    ("vision_tower.vision_model.", "tower."),
    ("model.vision_tower.", "tower."),
    ("vision_tower.", "tower."),
    ("model.multi_modal_projector.linear_1.", "projector.0."),
    ("model.multi_modal_projector.linear_2.", "projector.2."),
    ("multi_modal_projector.linear_1.", "projector.0."),
    ("multi_modal_projector.linear_2.", "projector.2."),
)


class CheckpointError(ValueError):
    """The checkpoint's vision tensors are missing or misshaped."""


class {{ cookiecutter.__prefix }}Vision(nn.Module):
    """CLIP vision tower + ``mlp2x_gelu`` projector.

    The tower keeps only the layers up to ``feature_layer`` (the layers after it never
    influence the output), so its ``last_hidden_state`` is the selected layer's output.
    """

    def __init__(self, vision_config: dict[str, Any], lm_hidden_size: int, feature_layer: int = -2) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        cfg = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k not in ("model_type", "architectures")})
        total = cfg.num_hidden_layers
        keep = total + 1 + feature_layer if feature_layer < 0 else feature_layer
        if not 1 <= keep <= total:
            raise ValueError(f"vision_feature_layer {feature_layer} is outside a {total}-layer tower")
        cfg.num_hidden_layers = keep
        self.tower = CLIPVisionModel(cfg)
        self.projector = nn.Sequential(
            nn.Linear(cfg.hidden_size, lm_hidden_size), nn.GELU(), nn.Linear(lm_hidden_size, lm_hidden_size)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` pixels -> ``[B, num_patches, lm_hidden_size]`` embeddings."""
        features = self.tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # drop CLS
        return self.projector(features)


def clip_image_processor_class() -> Any:
    """transformers' ``CLIPImageProcessor`` (its PIL variant when torchvision is absent,
    the same choice ``AutoImageProcessor`` makes)."""
    import transformers

    try:
        import torchvision  # noqa: F401
    except ImportError:
        return getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    return transformers.CLIPImageProcessor


class {{ cookiecutter.__prefix }}VisionModel(VisionModel):
    """Vision side of the {{ cookiecutter._name }} family (see the module docstring)."""

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        vision = hf_config.get("vision_config")
        text = hf_config.get("text_config")
        if not isinstance(vision, dict) or not isinstance(text, dict):
            raise ValueError(
                f"{model_path}/config.json needs 'vision_config' and 'text_config' for the {FAMILY} family"
            )
        if hf_config.get("vision_feature_select_strategy", "default") != "default":
            raise ValueError(f"{FAMILY}: only vision_feature_select_strategy 'default' (CLS dropped) is supported")
        self.tower_config = vision
        self.lm_hidden_size = int(text["hidden_size"])
        self.feature_layer = int(hf_config.get("vision_feature_layer", -2))
        self.image_size = int(vision.get("image_size", 224))
        self.patch_size = int(vision.get("patch_size", 14))
        #: embeddings per image: one per patch (the CLS position is dropped)
        self.num_tokens = (self.image_size // self.patch_size) ** 2

    # -- building (once) ---------------------------------------------------------------------
    def build_preprocessor(self) -> Any:
        self.preprocessor = clip_image_processor_class().from_pretrained(str(self.model_path))
        crop = getattr(self.preprocessor, "crop_size", None) or {}
        height = crop.get("height") if isinstance(crop, dict) else getattr(crop, "height", None)
        if height is not None and int(height) != self.image_size:
            raise ValueError(
                f"{self.model_path}: the image processor crops to {height} px but the vision tower takes "
                f"{self.image_size} px"
            )
        return self.preprocessor

    def build_model(self) -> Any:
        from accelerate import init_empty_weights

        with init_empty_weights():
            module = {{ cookiecutter.__prefix }}Vision(self.tower_config, self.lm_hidden_size, self.feature_layer)
        expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        tensors = read_vision_tensors(self.model_path, expected)
        # checks every tensor is there with its shape (CheckpointError names the first that are
        # not), then loads them on self.device / self.dtype
        self.load_weights(module, tensors, error=CheckpointError, what=f"{FAMILY} vision weights")
        self.model = module.to(self.device)  # moves the non-persistent buffers too
        return self.model

    # -- per batch of images -----------------------------------------------------------------
    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        for i, opts in enumerate(options):
            if opts:
                raise ValueError(f"image {i}: the {FAMILY} family takes no per-image options, got {sorted(opts)}")
        if self.preprocessor is None:
            self.build_preprocessor()
        pixels = self.preprocessor(images=list(images), return_tensors="pt")["pixel_values"]
        return [
            ImageItem(num_tokens=self.num_tokens, data={"pixel_values": px}, options=dict(opts))
            for px, opts in zip(pixels, options, strict=True)
        ]

    def forward(self, items: list[ImageItem]) -> list[torch.Tensor]:
        if not items:
            return []
        dtype = self.dtype or torch.float32
        pixels = torch.stack([item.data["pixel_values"] for item in items]).to(device=self.device, dtype=dtype)
        with torch.no_grad():
            embeddings = self.model(pixels)
        return list(embeddings.unbind(0))


def read_vision_tensors(model_path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The vision tower and projector tensors of a checkpoint, renamed to the module's names.

    ``vlkit.plugin.read_tensors`` opens only the shards holding them (safetensors or
    ``.bin``, sharded or not) and never loads the language model.
    """

    def rename(name: str) -> str | None:
        for src, dst in WEIGHT_PREFIXES:
            if name.startswith(src):
                rest = name[len(src):]
                for new in (dst + rest, dst + "vision_model." + rest):
                    if new in expected:
                        return new
                return None
        return None

    try:
        return read_tensors(model_path, rename)
    except FileNotFoundError as exc:
        raise CheckpointError(str(exc)) from exc
