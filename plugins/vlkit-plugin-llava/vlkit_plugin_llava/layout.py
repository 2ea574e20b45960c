"""What a LLaVA checkpoint's ``config.json`` says about its vision side, in one place.

Three layouts share one vision pipeline (CLIP tower -> feature layer -> projector -> optional
anyres packing):

* ``llava`` — transformers' ``LlavaForConditionalGeneration`` (llava-hf/llava-1.5-*-hf);
* ``llava-next`` — transformers' ``LlavaNextForConditionalGeneration`` (llava-hf/llava-v1.6-*-hf);
* ``original`` — liuhaotian's ``LlavaLlamaForCausalLM`` and ``LlavaMistralForCausalLM`` (LLaVA-1.5
  and 1.6 as released by the LLaVA repository): LLaMA / Mistral weights under ``model.*``,
  projector ``model.mm_projector.*``, the vision tower named by ``mm_vision_tower``.

Where the two worlds disagree the layout records it: grid pinpoints are (height, width) in
transformers and (width, height) in the original (stored here as (height, width) always);
``unpad`` rounds in transformers (``int(round(x, 7))``) and truncates in the original
(``int(x)``); the original 1.5 pads images to a square with the mean colour.

This module imports nothing heavy: the registry and the CLI read it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

HF_LLAVA = "LlavaForConditionalGeneration"
HF_LLAVA_NEXT = "LlavaNextForConditionalGeneration"
ORIGINAL_LLAVA = "LlavaLlamaForCausalLM"
ORIGINAL_LLAVA_MISTRAL = "LlavaMistralForCausalLM"  # liuhaotian/llava-v1.6-mistral-7b


class LlavaConfigError(ValueError):
    """A LLaVA ``config.json`` this plugin cannot serve; the message names the field."""


@dataclass(frozen=True)
class LlavaLayout:
    """The vision-side facts of one checkpoint.

    Args:
        kind: ``"llava"``, ``"llava-next"`` or ``"original"``.
        feature_layers: CLIP hidden-state indices whose outputs feed the projector
            (concatenated when several), as in ``vision_feature_layer``.
        drop_cls: drop the CLS position (``vision_feature_select_strategy="default"`` /
            ``mm_vision_select_feature="patch"``).
        projector: ``"mlpNx_gelu"`` or ``"linear"`` (the original's ``mm_projector_type``;
            transformers' projector is ``mlp2x`` with ``projector_act``).
        projector_act: activation between projector linears (``ACT2FN`` name).
        projector_bias: whether the projector linears have biases.
        image_mode: ``"crop"`` (the processor's resize + centre crop), ``"pad"`` (the
            original 1.5: pad to square with the mean colour first) or ``"anyres"``.
        pinpoints: anyres target resolutions as ``(height, width)``.
        merge: how anyres tiles are packed: ``"flat"``, ``"spatial"`` or ``"spatial_unpad"``.
        unpad_rounding: ``"round"`` (transformers) or ``"trunc"`` (original).
        newline: whether an ``image_newline`` embedding follows every unpadded row.
        lm_hidden: the language model's hidden size (projector output).
        vision_tower: the original's ``mm_vision_tower`` (hub id or path), else ``None``.
        tower_in_checkpoint: the original 1.6 fine-tuned its tower and saved it in the
            checkpoint (``unfreeze_mm_vision_tower``); those weights win over ``mm_vision_tower``'s.
    """

    kind: str
    feature_layers: tuple[int, ...]
    drop_cls: bool
    projector: str
    projector_act: str
    projector_bias: bool
    image_mode: str
    pinpoints: tuple[tuple[int, int], ...]
    merge: str
    unpad_rounding: str
    newline: bool
    lm_hidden: int
    vision_tower: str | None = None
    tower_in_checkpoint: bool = False

    @property
    def anyres(self) -> bool:
        return self.image_mode == "anyres"


def layout_from_config(hf_config: dict[str, Any]) -> LlavaLayout:
    """The :class:`LlavaLayout` of a checkpoint, dispatched on ``architectures``.

    (The original's ``model_type`` is ``"llava"``, the same as transformers' own LLaVA, so
    ``model_type`` cannot tell them apart.)
    """
    archs = list(hf_config.get("architectures") or [])
    if HF_LLAVA_NEXT in archs:
        return _hf_layout(hf_config, next_=True)
    if HF_LLAVA in archs:
        return _hf_layout(hf_config, next_=False)
    if ORIGINAL_LLAVA in archs or ORIGINAL_LLAVA_MISTRAL in archs or "mm_vision_tower" in hf_config:
        return _original_layout(hf_config)
    raise LlavaConfigError(f"not a LLaVA checkpoint: architectures={archs}")


def _layers(value: Any, field: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, int) for v in value):
        return tuple(value)
    raise LlavaConfigError(f"config.json {field}: expected an int or a list of ints, got {value!r}")


def _hf_layout(cfg: dict[str, Any], next_: bool) -> LlavaLayout:
    text = cfg.get("text_config") or {}
    if "hidden_size" not in text:
        raise LlavaConfigError("config.json text_config.hidden_size: missing")
    strategy = cfg.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise LlavaConfigError(f"config.json vision_feature_select_strategy: unknown value {strategy!r}")
    pinpoints: tuple[tuple[int, int], ...] = ()
    if next_:
        raw = cfg.get("image_grid_pinpoints") or [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        pinpoints = tuple((int(h), int(w)) for h, w in raw)
    return LlavaLayout(
        kind="llava-next" if next_ else "llava",
        feature_layers=_layers(cfg.get("vision_feature_layer", -2), "vision_feature_layer"),
        drop_cls=strategy == "default",
        projector="mlp2x_gelu",
        projector_act=cfg.get("projector_hidden_act", "gelu"),
        projector_bias=bool(cfg.get("multimodal_projector_bias", True)),
        image_mode="anyres" if next_ else "crop",
        pinpoints=pinpoints,
        merge="spatial_unpad" if next_ else "flat",
        unpad_rounding="round",
        newline=next_,
        lm_hidden=int(text["hidden_size"]),
    )


def _original_layout(cfg: dict[str, Any]) -> LlavaLayout:
    tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    if not tower:
        raise LlavaConfigError("config.json mm_vision_tower: missing (the original LLaVA layout names its CLIP tower there)")
    if "hidden_size" not in cfg:
        raise LlavaConfigError("config.json hidden_size: missing")
    if cfg.get("mm_use_im_start_end"):
        raise LlavaConfigError(
            "config.json mm_use_im_start_end: true is not supported (no released LLaVA-1.5/1.6 checkpoint uses it)"
        )
    select = cfg.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise LlavaConfigError(f"config.json mm_vision_select_feature: unknown value {select!r}")
    projector = cfg.get("mm_projector_type", "linear")
    if projector != "linear" and not re.fullmatch(r"mlp(\d+)x_gelu", projector):
        raise LlavaConfigError(f"config.json mm_projector_type: unsupported {projector!r} (linear, mlpNx_gelu)")
    aspect = cfg.get("image_aspect_ratio", "square") or "square"
    if aspect == "pad":
        mode = "pad"
    elif aspect == "anyres":
        mode = "anyres"
    elif aspect == "square":
        mode = "crop"
    else:
        raise LlavaConfigError(f"config.json image_aspect_ratio: unsupported {aspect!r} (square, pad, anyres)")
    pinpoints: tuple[tuple[int, int], ...] = ()
    if mode == "anyres":
        raw = cfg.get("image_grid_pinpoints")
        if isinstance(raw, str):
            raw = ast.literal_eval(raw)
        if not raw:
            raise LlavaConfigError("config.json image_grid_pinpoints: missing for image_aspect_ratio 'anyres'")
        pinpoints = tuple((int(h), int(w)) for w, h in raw)  # the original writes (width, height)
    merge = cfg.get("mm_patch_merge_type", "flat") or "flat"
    if merge not in ("flat", "spatial", "spatial_unpad"):
        raise LlavaConfigError(f"config.json mm_patch_merge_type: unsupported {merge!r}")
    return LlavaLayout(
        kind="original",
        feature_layers=_layers(cfg.get("mm_vision_select_layer", -2), "mm_vision_select_layer"),
        drop_cls=select == "patch",
        projector=projector,
        projector_act="gelu",
        projector_bias=True,
        image_mode=mode,
        pinpoints=pinpoints,
        # the original packs spatially only the anyres (list of tiles) path
        merge=merge if mode == "anyres" else "flat",
        unpad_rounding="trunc",
        newline=mode == "anyres" and "unpad" in merge,
        lm_hidden=int(cfg["hidden_size"]),
        vision_tower=str(tower),
        tower_in_checkpoint=bool(cfg.get("unfreeze_mm_vision_tower", False)),
    )


def projector_depth(projector: str) -> int:
    """Number of linear layers of a projector type (``linear`` -> 1, ``mlp2x_gelu`` -> 2)."""
    if projector == "linear":
        return 1
    m = re.fullmatch(r"mlp(\d+)x_gelu", projector)
    if not m:
        raise LlavaConfigError(f"unsupported projector {projector!r}")
    return int(m.group(1))
