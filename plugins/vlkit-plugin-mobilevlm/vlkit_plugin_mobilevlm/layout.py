"""What a MobileVLM ``config.json`` says about its vision side, in one place.

MobileVLM (``MobileLlamaForCausalLM``, ``model_type: "mobilevlm"``) is a LLaMA checkpoint with
extra tensors, as the MobileVLM repository's ``mobilevlm/model/*.py`` builds it:

* ``mm_vision_tower``: hub id or path of a CLIP checkpoint (``vision_tower_type: "clip"``);
  its config and image processor come from there. The released checkpoints also carry the
  tower's weights under ``model.vision_tower.vision_tower.vision_model.*``;
* ``mm_vision_select_layer`` (-2): an index into CLIP's ``hidden_states``;
  ``mm_vision_select_feature`` ``"patch"`` drops the CLS position (the only value the LDP
  projectors accept: they fold the tokens into a square grid);
* ``mm_projector_type``: ``ldpnet`` (V1) or ``ldpnetv2`` (V2) — the original dispatches with
  ``startswith``, ``ldpnetv2`` first; ``linear`` / ``mlpNx_gelu`` are also accepted there;
* ``image_aspect_ratio: "pad"``: pad to a square with the processor's mean colour first.

This module imports nothing heavy: the registry and the CLI read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ARCHITECTURE = "MobileLlamaForCausalLM"
# LDPv2's TokenDownLayer: the original hard-codes AdaptiveAvgPool2d((12, 12))
LDPV2_GRID = 12


class MobileVLMConfigError(ValueError):
    """A MobileVLM ``config.json`` this plugin cannot serve; the message names the field."""


@dataclass(frozen=True)
class MobileVLMLayout:
    """The vision-side facts of one checkpoint.

    Args:
        projector: ``"ldpnet"``, ``"ldpnetv2"``, ``"linear"`` or ``"mlpNx_gelu"``.
        select_layer: index into CLIP's ``hidden_states`` (negative from the end).
        drop_cls: ``mm_vision_select_feature == "patch"``.
        pad_to_square: ``image_aspect_ratio == "pad"``.
        mm_hidden: the tower's hidden size (projector input).
        lm_hidden: the language model's hidden size (projector output).
        vision_tower: ``mm_vision_tower`` (hub id or path).
    """

    projector: str
    select_layer: int
    drop_cls: bool
    pad_to_square: bool
    mm_hidden: int
    lm_hidden: int
    vision_tower: str

    @property
    def ldp(self) -> bool:
        return self.projector in ("ldpnet", "ldpnetv2")

    def num_tokens(self, grid: int) -> int:
        """Image tokens for a ``grid`` x ``grid`` patch grid after the projector."""
        if self.projector == "ldpnetv2":
            return LDPV2_GRID * LDPV2_GRID
        if self.projector == "ldpnet":
            side = (grid - 1) // 2 + 1  # the stride-2 3x3 depthwise conv (padding 1)
            return side * side
        return grid * grid + (0 if self.drop_cls else 1)


def projector_kind(name: str) -> str:
    """Normalise ``mm_projector_type`` as the original's ``build_vision_projector`` reads it."""
    if name.startswith("ldpnetv2"):
        return "ldpnetv2"
    if name.startswith("ldpnet"):
        return "ldpnet"
    if name == "linear" or re.fullmatch(r"mlp(\d+)x_gelu", name):
        return name
    raise MobileVLMConfigError(
        f"config.json mm_projector_type: unsupported {name!r} (ldpnet, ldpnetv2, linear, mlpNx_gelu)"
    )


def layout_from_config(cfg: dict[str, Any]) -> MobileVLMLayout:
    tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    if not tower:
        raise MobileVLMConfigError("config.json mm_vision_tower: missing (MobileVLM names its CLIP tower there)")
    tower_type = cfg.get("vision_tower_type", "clip")
    if tower_type != "clip":
        raise MobileVLMConfigError(f"config.json vision_tower_type: unsupported {tower_type!r} (only 'clip')")
    for key in ("hidden_size", "mm_hidden_size"):
        if not isinstance(cfg.get(key), int):
            raise MobileVLMConfigError(f"config.json {key}: missing or not an int")
    if cfg.get("mm_use_im_start_end"):
        raise MobileVLMConfigError("config.json mm_use_im_start_end: true is not supported (no released MobileVLM uses it)")
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise MobileVLMConfigError(f"config.json mm_vision_select_feature: unknown value {select!r}")
    projector = projector_kind(str(cfg.get("mm_projector_type", "linear")))
    if projector.startswith("ldp") and select != "patch":
        raise MobileVLMConfigError(
            "config.json mm_vision_select_feature: the LDP projectors need 'patch' (a square grid of tokens)"
        )
    layer = cfg.get("mm_vision_select_layer", -2)
    if not isinstance(layer, int):
        raise MobileVLMConfigError(f"config.json mm_vision_select_layer: expected an int, got {layer!r}")
    aspect = cfg.get("image_aspect_ratio")  # the original pads for "pad", anything else goes straight in
    return MobileVLMLayout(
        projector=projector,
        select_layer=layer,
        drop_cls=select == "patch",
        pad_to_square=aspect == "pad",
        mm_hidden=int(cfg["mm_hidden_size"]),
        lm_hidden=int(cfg["hidden_size"]),
        vision_tower=str(tower),
    )
