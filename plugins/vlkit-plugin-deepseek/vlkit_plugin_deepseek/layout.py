"""What a DeepSeek-VL checkpoint's ``config.json`` says about its vision side.

Three layouts:

* ``hf`` — ``DeepseekVLForConditionalGeneration``: ``vision_config`` (SigLIP), aligner
  ``linear1``/GELU/``linear2``;
* ``hf-hybrid`` — ``DeepseekVLHybridForConditionalGeneration``: ``vision_config`` (SigLIP,
  low resolution) + ``high_res_vision_config`` (SAM), aligner ``vision_proj``/
  ``high_res_vision_proj``/GELU/``proj``;
* ``original`` — ``MultiModalityCausalLM``: ``vision_config {cls, params}``,
  ``aligner_config {cls, params}``, ``language_config``. Tower sizes come from the original's
  tables keyed by ``model_name``; ``params`` keys named like the table fields override them
  (tiny test checkpoints use that).

:func:`build_vision` builds the module and :func:`rename` maps a checkpoint tensor name onto
it (``None`` for tensors the vision side does not use).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

HF = "DeepseekVLForConditionalGeneration"
HF_HYBRID = "DeepseekVLHybridForConditionalGeneration"
ORIGINAL = "MultiModalityCausalLM"

# the original repository's tables (siglip_vit.SigLIP_MODEL_CONFIG, sam.SAM_MODEL_CONFIG)
SIGLIP_TABLE = {
    "siglip_so400m_patch14_384": dict(patch_size=14, width=1152, layers=27, heads=16, mlp_ratio=3.7362),
    "siglip_so400m_patch14_224": dict(patch_size=14, width=1152, layers=27, heads=16, mlp_ratio=3.7362),
    "siglip_large_patch16_384": dict(patch_size=16, width=1024, layers=24, heads=16, mlp_ratio=4),
}
SAM_TABLE = {
    "sam_vit_b": dict(width=768, layers=12, heads=12, global_attn_indexes=[2, 5, 8, 11], downsample_channels=[]),
    "sam_b_downsample": dict(width=768, layers=12, heads=12, global_attn_indexes=[2, 5, 8, 11],
                             downsample_channels=[512, 1024]),
    "sam_vit_l": dict(width=1024, layers=24, heads=16, global_attn_indexes=[5, 11, 17, 23], downsample_channels=[]),
    "sam_vit_h": dict(width=1280, layers=32, heads=16, global_attn_indexes=[7, 15, 23, 31], downsample_channels=[]),
}
SAM_DEFAULTS = dict(patch_size=16, prompt_embed_dim=256, window_size=14, mlp_ratio=4)
SAM_FEATURE_SIZE = 96  # the original resizes SAM's neck output to 96 x 96 before downsampling


class DeepseekConfigError(ValueError):
    """A config.json this plugin cannot serve; the message names the field."""


@dataclass
class TowerSpec:
    kind: str  # "siglip" | "sam"
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_hidden: int
    eps: float = 1e-6
    act: str = "gelu"
    pixel_mean: list[float] | None = None
    pixel_std: list[float] | None = None
    global_attn_indexes: list[int] = field(default_factory=list)
    out_chans: int = 0
    downsample_channels: list[int] = field(default_factory=list)
    window_size: int = 14
    feature_size: int = SAM_FEATURE_SIZE


@dataclass
class VisionLayout:
    kind: str  # "hf" | "hf-hybrid" | "original"
    low: TowerSpec  # SigLIP (the only tower of the 1.3b)
    high: TowerSpec | None  # SAM (7b)
    projector_type: str
    aligner_depth: int
    aligner_input: int
    lm_hidden: int

    @property
    def hybrid(self) -> bool:
        return self.high is not None

    @property
    def num_tokens(self) -> int:
        if self.high is not None:
            g = self.high.feature_size
            for _ in self.high.downsample_channels:
                g = (g - 1) // 2 + 1
            return g * g
        return (self.low.image_size // self.low.patch_size) ** 2


def _act(name: str | None) -> str:
    if name in (None, "gelu"):
        return "gelu"
    if name in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
        return "gelu_tanh"
    raise DeepseekConfigError(f"vision_config.hidden_act {name!r} is not supported")


def _hf_siglip(vc: dict[str, Any], where: str) -> TowerSpec:
    if vc.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise DeepseekConfigError(f"{where}.model_type must be siglip_vision_model, got {vc.get('model_type')!r}")
    try:
        return TowerSpec(
            "siglip", int(vc.get("image_size", 224)), int(vc.get("patch_size", 16)), int(vc["hidden_size"]),
            int(vc["num_hidden_layers"]), int(vc["num_attention_heads"]), int(vc["intermediate_size"]),
            float(vc.get("layer_norm_eps", 1e-6)), _act(vc.get("hidden_act", "gelu_pytorch_tanh")),
        )
    except KeyError as exc:
        raise DeepseekConfigError(f"{where} lacks {exc.args[0]!r}") from exc


def _text_hidden(cfg: dict[str, Any], key: str) -> int:
    text = cfg.get(key)
    if not isinstance(text, dict) or "hidden_size" not in text:
        raise DeepseekConfigError(f"config.json {key}.hidden_size is missing")
    return int(text["hidden_size"])


def layout_from_config(cfg: dict[str, Any]) -> VisionLayout:
    archs = list(cfg.get("architectures") or [])
    if HF_HYBRID in archs or cfg.get("model_type") == "deepseek_vl_hybrid":
        return _hf_hybrid(cfg)
    if HF in archs or cfg.get("model_type") == "deepseek_vl":
        low = _hf_siglip(cfg.get("vision_config") or {}, "vision_config")
        return VisionLayout("hf", low, None, "mlp_gelu", 2, low.width, _text_hidden(cfg, "text_config"))
    if ORIGINAL in archs or cfg.get("model_type") == "multi_modality":
        return _original(cfg)
    raise DeepseekConfigError(f"not a DeepSeek-VL config (architectures {archs})")


def _hf_hybrid(cfg: dict[str, Any]) -> VisionLayout:
    low = _hf_siglip(cfg.get("vision_config") or {}, "vision_config")
    hc = cfg.get("high_res_vision_config") or {}
    try:
        out = int(hc.get("output_channels", 256))
        hidden = int(hc.get("hidden_size", 768))
        high = TowerSpec(
            "sam", int(hc.get("image_size", 1024)), int(hc.get("patch_size", 16)), hidden,
            int(hc.get("num_hidden_layers", 12)), int(hc.get("num_attention_heads", 12)),
            int(hc.get("mlp_dim") or hidden * float(hc.get("mlp_ratio", 4.0))),
            float(hc.get("layer_norm_eps", 1e-6)), _act(hc.get("hidden_act", "gelu")),
            global_attn_indexes=[int(i) for i in hc.get("global_attn_indexes", [2, 5, 8, 11])],
            out_chans=out, downsample_channels=[out * 2, out * 4],
            window_size=int(hc.get("window_size", 14)),
            # transformers resizes to 4 x SigLIP's grid (96 for the released 384/16 tower)
            feature_size=4 * (low.image_size // low.patch_size),
        )
    except (TypeError, ValueError) as exc:
        raise DeepseekConfigError(f"high_res_vision_config: {exc}") from exc
    if not hc.get("use_rel_pos", True) or not hc.get("use_abs_pos", True):
        raise DeepseekConfigError("high_res_vision_config: only use_rel_pos=use_abs_pos=true (SAM-B) is supported")
    if high.downsample_channels[-1] != low.width:
        # transformers allows it; the original's split aligner has one input_dim for both
        pass
    return VisionLayout("hf-hybrid", low, high, "low_high_hybrid_split_mlp_gelu", 2, low.width,
                        _text_hidden(cfg, "text_config"))


def _params(section: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(section, dict) or "cls" not in section:
        raise DeepseekConfigError(f"config.json {where}.cls is missing")
    return str(section["cls"]), dict(section.get("params") or {})


def _original_tower(p: dict[str, Any], where: str) -> TowerSpec:
    name = str(p.get("model_name", "siglip_large_patch16_384"))
    mean, std = p.get("pixel_mean"), p.get("pixel_std")
    norm = (list(mean), list(std)) if mean is not None and std is not None else (None, None)
    if name.startswith("siglip"):
        if name not in SIGLIP_TABLE:
            raise DeepseekConfigError(f"{where}.model_name {name!r} is not one of {sorted(SIGLIP_TABLE)}")
        t = {**SIGLIP_TABLE[name], **{k: p[k] for k in ("patch_size", "width", "layers", "heads", "mlp_ratio") if k in p}}
        layers = int(t["layers"])
        sel = int(p.get("select_layer", -1))
        layers = min(layers, layers + sel + 1) if sel <= 0 else min(layers, sel)
        return TowerSpec(
            "siglip", int(p.get("image_size", 384)), int(t["patch_size"]), int(t["width"]), layers, int(t["heads"]),
            int(int(t["width"]) * float(t["mlp_ratio"])), 1e-6, "gelu", norm[0], norm[1],
        )
    if name.startswith("sam"):
        if name not in SAM_TABLE:
            raise DeepseekConfigError(f"{where}.model_name {name!r} is not one of {sorted(SAM_TABLE)}")
        keys = ("patch_size", "width", "layers", "heads", "global_attn_indexes", "downsample_channels",
                "prompt_embed_dim", "mlp_ratio", "window_size")
        t = {**SAM_DEFAULTS, **SAM_TABLE[name], **{k: p[k] for k in keys if k in p}}
        return TowerSpec(
            "sam", int(p.get("image_size", 1024)), int(t["patch_size"]), int(t["width"]), int(t["layers"]),
            int(t["heads"]), int(int(t["width"]) * float(t["mlp_ratio"])), 1e-6, "gelu", norm[0], norm[1],
            global_attn_indexes=[int(i) for i in t["global_attn_indexes"]], out_chans=int(t["prompt_embed_dim"]),
            downsample_channels=[int(c) for c in t["downsample_channels"]], window_size=int(t["window_size"]),
        )
    raise DeepseekConfigError(
        f"{where}.model_name {name!r}: only the repository's own SigLIP and SAM towers are supported"
    )


def _original(cfg: dict[str, Any]) -> VisionLayout:
    vcls, vp = _params(cfg.get("vision_config"), "vision_config")
    acls, ap = _params(cfg.get("aligner_config"), "aligner_config")
    if "MlpProjector" not in acls:
        raise DeepseekConfigError(f"aligner_config.cls {acls!r} is not supported (MlpProjector)")
    ptype = str(ap.get("projector_type", "mlp_gelu"))
    hidden = _text_hidden(cfg, "language_config")
    if "HybridVisionTower" in vcls:
        if vp.get("concat_type", "tuple") != "tuple":
            raise DeepseekConfigError("vision_config.params.concat_type: only 'tuple' is supported")
        high = _original_tower(dict(vp.get("high_res_cfg") or {}), "vision_config.params.high_res_cfg")
        low = _original_tower(dict(vp.get("low_res_cfg") or {}), "vision_config.params.low_res_cfg")
        if high.kind != "sam" or low.kind != "siglip":
            raise DeepseekConfigError("HybridVisionTower: high_res_cfg must be a SAM tower, low_res_cfg a SigLIP one")
        if ptype != "low_high_hybrid_split_mlp_gelu":
            raise DeepseekConfigError(f"aligner projector_type {ptype!r} does not fit a HybridVisionTower")
    elif "CLIPVisionTower" in vcls:
        high, low = None, _original_tower(vp, "vision_config.params")
        if low.kind != "siglip":
            raise DeepseekConfigError("CLIPVisionTower: only a SigLIP model_name is supported on its own")
        if ptype not in ("mlp_gelu", "linear"):
            raise DeepseekConfigError(f"aligner projector_type {ptype!r} does not fit a single tower")
    else:
        raise DeepseekConfigError(f"vision_config.cls {vcls!r} is not supported")
    n_embed = int(ap.get("n_embed", hidden))
    if n_embed != hidden:
        raise DeepseekConfigError(f"aligner n_embed {n_embed} != language_config.hidden_size {hidden}")
    return VisionLayout("original", low, high, ptype, int(ap.get("depth", 1)), int(ap.get("input_dim", low.width)), hidden)


# --------------------------------------------------------------------------------------------
# building and naming


def _siglip_module(t: TowerSpec) -> Any:
    from vlkit_plugin_deepseek.modeling import SiglipTower

    return SiglipTower(t.image_size, t.patch_size, t.width, t.layers, t.heads, t.mlp_hidden, t.eps, t.act)


def build_vision(lay: VisionLayout) -> Any:
    """The (empty-weight-friendly) module for ``lay``; build it under ``init_empty_weights``."""
    from vlkit_plugin_deepseek.modeling import Aligner, HybridVision, SamTower, SiglipVision

    aligner = Aligner(lay.projector_type, lay.aligner_input, lay.lm_hidden, lay.aligner_depth)
    low = _siglip_module(lay.low)
    low_norm = (lay.low.pixel_mean, lay.low.pixel_std) if lay.low.pixel_mean is not None else None
    if lay.high is None:
        return SiglipVision(low, aligner, low_norm)
    h = lay.high
    high = SamTower(h.image_size, h.patch_size, h.width, h.layers, h.heads, h.mlp_hidden, h.global_attn_indexes,
                    h.out_chans, h.downsample_channels, h.window_size, h.feature_size, h.eps)
    high_norm = (h.pixel_mean, h.pixel_std) if h.pixel_mean is not None else None
    return HybridVision(high, low, aligner, high_norm, low_norm)


def _siglip_rules(src: str, dst: str) -> list[tuple[str, str]]:
    """transformers' SiglipVisionModel names under ``src`` -> ours under ``dst`` (q/k/v are
    concatenated into ``qkv`` by :func:`fuse_qkv`)."""
    return [
        (rf"{src}embeddings\.patch_embedding\.", f"{dst}patch_embed.proj."),
        (rf"{src}embeddings\.position_embedding\.weight$", f"{dst}pos_embed"),
        (rf"{src}encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.", rf"{dst}blocks.\1.attn.\2."),
        (rf"{src}encoder\.layers\.(\d+)\.self_attn\.out_proj\.", rf"{dst}blocks.\1.attn.proj."),
        (rf"{src}encoder\.layers\.(\d+)\.layer_norm(\d)\.", rf"{dst}blocks.\1.norm\2."),
        (rf"{src}encoder\.layers\.(\d+)\.mlp\.", rf"{dst}blocks.\1.mlp."),
        (rf"{src}post_layernorm\.", f"{dst}norm."),
    ]


def _hf_neck(src: str, dst: str) -> list[tuple[str, str]]:
    return [
        (rf"{src}conv1\.", f"{dst}0."),
        (rf"{src}layer_norm1\.", f"{dst}1."),
        (rf"{src}conv2\.", f"{dst}2."),
        (rf"{src}layer_norm2\.", f"{dst}3."),
    ]


_P = r"^(?:model\.)?"  # transformers 5 writes model.*, older versions wrote the bare names
_VM = rf"{_P}vision_model\.(?:vision_model\.)?"
_SAM = rf"{_P}high_res_vision_model\.(?:vision_encoder\.)?"

RULES: dict[str, list[tuple[str, str]]] = {
    "hf": _siglip_rules(_VM, "vision_tower.") + [
        (rf"{_P}aligner\.linear1\.", "aligner.layers.0."),
        (rf"{_P}aligner\.linear2\.", "aligner.layers.2."),
    ],
    "hf-hybrid": _siglip_rules(_VM, "vision_tower_low.") + [
        (rf"{_SAM}patch_embed\.projection\.", "vision_tower_high.patch_embed.proj."),
        (rf"{_SAM}pos_embed$", "vision_tower_high.pos_embed"),
        (rf"{_SAM}layers\.(\d+)\.layer_norm(\d)\.", r"vision_tower_high.blocks.\1.norm\2."),
        (rf"{_SAM}layers\.(\d+)\.(attn|mlp)\.", r"vision_tower_high.blocks.\1.\2."),
        *_hf_neck(rf"{_SAM}neck\.", "vision_tower_high.neck."),
        *_hf_neck(rf"{_P}high_res_vision_neck\.", "vision_tower_high.neck_hd."),
        (rf"{_P}high_res_vision_proj\.conv(\d)\.", "vision_tower_high.downsamples.{conv}."),
        (rf"{_P}high_res_vision_alpha$", "vision_tower_high.hd_alpha_downsamples"),
        (rf"{_P}aligner\.vision_proj\.", "aligner.low_up_proj."),
        (rf"{_P}aligner\.high_res_vision_proj\.", "aligner.high_up_proj."),
        (rf"{_P}aligner\.proj\.", "aligner.layers.1."),
    ],
    "original": [
        (r"^vision_model\.vision_tower_high\.vision_tower\.", "vision_tower_high."),
        (r"^vision_model\.vision_tower_low\.vision_tower\.", "vision_tower_low."),
        (r"^vision_model\.vision_tower\.", "vision_tower."),
        (r"^aligner\.", "aligner."),
    ],
}
_COMPILED = {k: [(re.compile(p), r) for p, r in v] for k, v in RULES.items()}


def rename(kind: str, name: str) -> str | None:
    """The module name of checkpoint tensor ``name`` in layout ``kind`` (``None``: not ours)."""
    for pat, repl in _COMPILED[kind]:
        m = pat.match(name)
        if m:
            if "{conv}" in repl:  # transformers' conv1/conv2 are downsamples.0/1
                return repl.replace("{conv}", str(int(m.group(1)) - 1)) + name[m.end():]
            return m.expand(repl) + name[m.end():]
    return None


def fuse_qkv(tensors: dict[str, Any]) -> dict[str, Any]:
    """Concatenate ``*.attn.{q,k,v}.{weight,bias}`` (transformers' SigLIP) into ``*.attn.qkv.*``;
    reshape a ``[N, D]`` SigLIP position table to ``[1, N, D]``."""
    import torch

    out: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for name, t in tensors.items():
        m = re.match(r"^(.*\.attn)\.([qkv])\.(weight|bias)$", name)
        if m:
            groups.setdefault(f"{m.group(1)}.qkv.{m.group(3)}", {})[m.group(2)] = t
        else:
            out[name] = t
    for name, parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"{name}: the checkpoint has only {sorted(parts)} of q/k/v")
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    for name in list(out):
        if name.endswith("pos_embed") and "vision_tower_high" not in name and out[name].dim() == 2:
            out[name] = out[name].unsqueeze(0)
    return out
