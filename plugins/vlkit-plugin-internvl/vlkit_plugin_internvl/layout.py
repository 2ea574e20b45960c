"""What an InternVL ``config.json`` says, for both on-disk layouts (no torch here).

* original (``InternVLChatModel``): ``vision_config`` (InternViT: ``qkv_bias``,
  ``qk_normalization``, ``norm_type``...), ``llm_config``, ``force_image_size``,
  ``downsample_ratio``, ``ps_version``, ``select_layer``, ``template``, ``use_thumbnail``,
  ``min_dynamic_patch`` / ``max_dynamic_patch``;
* transformers (``InternVLForConditionalGeneration``): ``vision_config`` (``attention_bias``,
  ``use_qk_norm``, ``norm_type``...), ``text_config``, ``downsample_ratio``,
  ``vision_feature_layer``, ``image_seq_length``; tiling settings live in the image processor's
  ``preprocessor_config.json`` (``crop_to_patches``, ``min_patches``, ``max_patches``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ORIGINAL = "InternVLChatModel"
HF = "InternVLForConditionalGeneration"


class InternVLConfigError(ValueError):
    """A config.json this plugin cannot serve; the message says which key."""


@dataclass(frozen=True)
class InternVLLayout:
    kind: str  # "original" | "hf"
    image_size: int  # tile side in pixels
    patch_size: int
    vit_hidden: int
    vit_heads: int
    vit_layers: int
    vit_intermediate: int
    vit_act: str
    norm_type: str  # "layer_norm" | "rms_norm"
    layer_norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    downsample_ratio: float
    ps_version: str
    select_layer: int
    lm_hidden: int
    projector_act: str
    template: str | None
    use_thumbnail: bool
    min_dynamic_patch: int
    max_dynamic_patch: int
    dynamic_image_size: bool
    final_norm: bool = False  # transformers' use_mean_pooling=False: LayerNorm after the last layer

    @property
    def tokens_per_tile(self) -> int:
        side = self.image_size // self.patch_size
        return int(side * side * self.downsample_ratio**2)

    @property
    def shuffle_factor(self) -> int:
        return int(round(1 / self.downsample_ratio))


def _side(v: Any) -> int:
    if isinstance(v, (list, tuple)):
        if len(set(int(x) for x in v)) != 1:
            raise InternVLConfigError(f"non-square size {v} is not supported")
        return int(v[0])
    return int(v)


def layout_from_config(cfg: dict[str, Any]) -> InternVLLayout:
    archs = cfg.get("architectures") or []
    vc = cfg.get("vision_config")
    if not isinstance(vc, dict):
        raise InternVLConfigError("config.json has no vision_config")
    if ORIGINAL in archs:
        llm = cfg.get("llm_config")
        if not isinstance(llm, dict):
            raise InternVLConfigError("InternVLChatModel config.json has no llm_config")
        image_size = _side(cfg.get("force_image_size") or vc.get("image_size", 448))
        return InternVLLayout(
            kind="original",
            image_size=image_size,
            patch_size=_side(vc.get("patch_size", 14)),
            vit_hidden=int(vc.get("hidden_size", 1024)),
            vit_heads=int(vc.get("num_attention_heads", 16)),
            vit_layers=int(vc.get("num_hidden_layers", 24)),
            vit_intermediate=int(vc.get("intermediate_size", 4096)),
            vit_act=str(vc.get("hidden_act", "gelu")),
            norm_type=str(vc.get("norm_type", "rms_norm")),
            layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
            qkv_bias=bool(vc.get("qkv_bias", False)),
            qk_norm=bool(vc.get("qk_normalization", False)),
            downsample_ratio=float(cfg.get("downsample_ratio", 0.5)),
            ps_version=str(cfg.get("ps_version", "v1")),
            select_layer=int(cfg.get("select_layer", -1)),
            lm_hidden=int(llm["hidden_size"]),
            projector_act="gelu",
            template=cfg.get("template"),
            use_thumbnail=bool(cfg.get("use_thumbnail", False)),
            min_dynamic_patch=int(cfg.get("min_dynamic_patch", 1)),
            max_dynamic_patch=int(cfg.get("max_dynamic_patch", 6)),
            dynamic_image_size=bool(cfg.get("dynamic_image_size", False)),
        )
    if HF in archs:
        tc = cfg.get("text_config")
        if not isinstance(tc, dict):
            raise InternVLConfigError("InternVLForConditionalGeneration config.json has no text_config")
        layer = cfg.get("vision_feature_layer", -1)
        if isinstance(layer, list):
            raise InternVLConfigError("vision_feature_layer as a list of layers is not supported")
        if cfg.get("vision_feature_select_strategy", "default") != "default":
            raise InternVLConfigError("only vision_feature_select_strategy 'default' (CLS dropped) is supported")
        return InternVLLayout(
            kind="hf",
            image_size=_side(vc.get("image_size", 448)),
            patch_size=_side(vc.get("patch_size", 14)),
            vit_hidden=int(vc.get("hidden_size", 1024)),
            vit_heads=int(vc.get("num_attention_heads", 16)),
            vit_layers=int(vc.get("num_hidden_layers", 24)),
            vit_intermediate=int(vc.get("intermediate_size", 4096)),
            vit_act=str(vc.get("hidden_act", "gelu")),
            norm_type=str(vc.get("norm_type", "layer_norm")),
            layer_norm_eps=float(vc.get("layer_norm_eps", 1e-6)),
            qkv_bias=bool(vc.get("attention_bias", False)),
            qk_norm=bool(vc.get("use_qk_norm", False)),
            downsample_ratio=float(cfg.get("downsample_ratio", 0.5)),
            ps_version="v2",
            select_layer=int(layer),
            lm_hidden=int(tc["hidden_size"]),
            projector_act=str(cfg.get("projector_hidden_act", "gelu")),
            template=None,
            use_thumbnail=True,
            min_dynamic_patch=1,
            max_dynamic_patch=12,
            dynamic_image_size=True,
            final_norm=not bool(vc.get("use_mean_pooling", True)),
        )
    raise InternVLConfigError(f"architectures {archs} are not InternVL's ({ORIGINAL}, {HF})")
