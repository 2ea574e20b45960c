"""Qwen2-VL / Qwen2.5-VL's VisionModel: dynamic-resolution preprocessing, tower + merger, M-RoPE.

Preprocessing is the checkpoint's ``Qwen2VLImageProcessor`` (``preprocessor_config.json``:
``min_pixels`` / ``max_pixels``, patch 14, merge 2, temporal patch 2): each image is resized
so that both sides are multiples of ``patch × merge`` and its area lies in
``[min_pixels, max_pixels]``, then cut into a ``(t=1, h, w)`` grid of patches; it fills
``t·h·w / merge²`` prompt positions. ``min_pixels`` / ``max_pixels`` may be set per image
(``image_url: {"url": ..., "min_pixels": ..., "max_pixels": ...}``).

The vision tower and merger are transformers' own classes (``Qwen2VisionTransformerPretrainedModel``
for Qwen2-VL; ``Qwen2_5_VisionTransformerPretrainedModel`` — window attention, SwiGLU, RMSNorm —
for Qwen2.5-VL), built on ``accelerate.init_empty_weights`` from the checkpoint's
``vision_config``, with only the ``visual.*`` (or ``model.visual.*``) tensors loaded: the same
math as the reference by construction. Several images go through one forward (the tower
attends within each image, ``cu_seqlens``).

:meth:`QwenVLVisionModel.mrope_positions` computes the 3-D rotary positions as transformers'
``get_rope_index``: text tokens count up on all three axes; an image whose merged grid is
``(t, h', w')`` starting at position ``p`` gets ``(p + t_i, p + h_i, p + w_i)``, and the text
after it continues at ``p + max(h', w')``; generated tokens sit at ``len + k + delta`` with
``delta = max position + 1 - len``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ImageItem, VisionModel
from vlkit_plugin_qwen import weights

OPTIONS = ("min_pixels", "max_pixels")
_IGNORED_OPTIONS = ("detail",)


class QwenVisionWeightError(ValueError):
    """The checkpoint lacks vision tensors or has them in the wrong shape."""


def _pixels_option(opts: dict[str, Any], key: str, index: int) -> int | None:
    v = opts.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"image {index}: {key} must be a positive integer (a pixel count), got {v!r}")
    return v


def image_processor(model_path: Path) -> Any:
    """The checkpoint's Qwen2-VL image processor (the PIL backend when torchvision is absent)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil.from_pretrained(str(model_path))
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(str(model_path), trust_remote_code=False)


class QwenVLVisionModel(VisionModel):
    """Qwen2-VL / Qwen2.5-VL vision side; one ``[t·h·w / merge², lm_hidden]`` tensor per image."""

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        vc = hf_config.get("vision_config") or {}
        self.architecture = (hf_config.get("architectures") or ["Qwen2VLForConditionalGeneration"])[0]
        self.merge_size = int(vc.get("spatial_merge_size", 2))
        self.image_token_id = hf_config.get("image_token_id")
        if self.image_token_id is None:
            text = hf_config.get("text_config") or {}
            self.image_token_id = text.get("image_token_id")

    # -- building ----------------------------------------------------------------------------
    def build_preprocessor(self) -> Any:
        self.preprocessor = image_processor(self.model_path)
        merge = int(getattr(self.preprocessor, "merge_size", self.merge_size))
        if merge != self.merge_size:
            raise ValueError(
                f"preprocessor_config.json merge_size {merge} differs from vision_config.spatial_merge_size "
                f"{self.merge_size}"
            )
        return self.preprocessor

    def _tower_class(self) -> Any:
        if self.architecture == "Qwen2_5_VLForConditionalGeneration":
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
                Qwen2_5_VisionTransformerPretrainedModel,
            )

            return Qwen2_5_VisionTransformerPretrainedModel
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        return Qwen2VisionTransformerPretrainedModel

    def build_model(self) -> Any:
        from accelerate import init_empty_weights
        from transformers import AutoConfig

        vcfg = AutoConfig.from_pretrained(str(self.model_path), trust_remote_code=False).vision_config
        vcfg._attn_implementation = "sdpa"
        with init_empty_weights():
            module = self._tower_class()(vcfg)
        tensors = weights.vision_tensors(self.model_path)
        self.load_weights(module, tensors, error=QwenVisionWeightError, name_of=lambda k: "visual." + k)
        module.to(self.device)  # non-persistent buffers (rotary tables)
        self.model = module
        return self.model

    # -- preprocessing -----------------------------------------------------------------------
    def pixel_range(self, opts: dict[str, Any], index: int) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` for one image: its options, else the checkpoint's."""
        unknown = sorted(set(opts) - set(OPTIONS) - set(_IGNORED_OPTIONS))
        if unknown:
            raise ValueError(f"image {index}: unknown Qwen2-VL image option(s) {unknown}; accepted: {list(OPTIONS)}")
        size = self.preprocessor.size
        get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
        lo = _pixels_option(opts, "min_pixels", index) or int(get("shortest_edge"))
        hi = _pixels_option(opts, "max_pixels", index) or int(get("longest_edge"))
        if lo > hi:
            raise ValueError(f"image {index}: min_pixels {lo} > max_pixels {hi}")
        return lo, hi

    def preprocess(self, images: list[Any], options: list[dict[str, Any]]) -> list[ImageItem]:
        import torch

        if self.preprocessor is None:
            self.build_preprocessor()
        items = []
        for i, (img, opts) in enumerate(zip(images, options)):
            lo, hi = self.pixel_range(opts, i)
            out = self.preprocessor(images=[img], size={"shortest_edge": lo, "longest_edge": hi}, return_tensors="pt")
            grid = tuple(int(x) for x in out["image_grid_thw"][0].tolist())
            n = grid[0] * grid[1] * grid[2] // (self.merge_size ** 2)
            px = torch.as_tensor(out["pixel_values"])
            items.append(ImageItem(
                num_tokens=n,
                data={"pixel_values": px, "grid_thw": grid},
                options=dict(opts),
                meta={"grid_thw": grid, "merge_size": self.merge_size, "min_pixels": lo, "max_pixels": hi,
                      "size": tuple(img.size)},
            ))
        return items

    # -- encoding ----------------------------------------------------------------------------
    def forward(self, items: list[ImageItem]) -> list[Any]:
        import torch

        if not items:
            return []
        model = self.model
        dtype = next(model.parameters()).dtype
        px = torch.cat([it.data["pixel_values"] for it in items]).to(device=self.device, dtype=dtype)
        grid = torch.tensor([it.data["grid_thw"] for it in items], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = model(px, grid_thw=grid)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return list(torch.split(feats, [it.num_tokens for it in items]))

    # -- limits ------------------------------------------------------------------------------
    def prompt_too_long(self, input_ids: list[int], items: list[ImageItem], session_len: int) -> str | None:
        """A clear error when the images leave no room in ``session_len`` (called by the pipeline).

        Suggests a ``max_pixels`` that makes the images fit with some room to generate: each image
        of ``k`` tokens covers ``k × (patch × merge)²`` pixels.
        """
        n = len(input_ids)
        if n < session_len:
            return None
        image_tokens = sum(it.num_tokens for it in items)
        text_tokens = n - image_tokens
        patch = getattr(self.preprocessor, "patch_size", 14)
        unit = (int(patch) * self.merge_size) ** 2
        budget = (session_len - text_tokens) * 3 // 4 // max(1, len(items))  # leave a quarter to generate
        detail = ", ".join(
            f"image {i}: {it.meta.get('size', ('?', '?'))[0]}x{it.meta.get('size', ('?', '?'))[1]} px -> "
            f"{it.num_tokens} tokens (max_pixels {it.meta.get('max_pixels')})" for i, it in enumerate(items))
        msg = (f"prompt of {n} tokens exceeds session_len {session_len}: its {len(items)} image(s) take "
               f"{image_tokens} tokens ({detail}). Each {unit} pixels of an image cost one token; ")
        if budget >= 4:
            msg += (f"lower max_pixels per image, e.g. image_url: {{\"url\": ..., \"max_pixels\": {budget * unit}}} "
                    f"(or max_pixels in preprocessor_config.json), or raise EngineConfig.session_len")
        else:
            msg += "the text alone nearly fills it: shorten the prompt or raise EngineConfig.session_len"
        return msg

    # -- positions ---------------------------------------------------------------------------
    def mrope_positions(self, input_ids: list[int], items: list[ImageItem]) -> tuple[Any, int]:
        """``([3, len(input_ids)] LongTensor, delta)``, as transformers' ``get_rope_index``."""
        import torch

        tid = self.image_token_id
        n = len(input_ids)
        pos = torch.empty(3, n, dtype=torch.long)
        cur, i, k, m = 0, 0, 0, self.merge_size
        while i < n:
            if input_ids[i] != tid:
                j = i
                while j < n and input_ids[j] != tid:
                    j += 1
                pos[:, i:j] = torch.arange(cur, cur + j - i)
                cur += j - i
                i = j
                continue
            if k >= len(items):
                raise ValueError(f"the prompt has more image tokens than the {len(items)} image(s) fill")
            t, h, w = items[k].meta["grid_thw"]
            gt, gh, gw = t, h // m, w // m
            count = gt * gh * gw
            if input_ids[i:i + count] != [tid] * count:
                raise ValueError(f"image {k} needs {count} contiguous image tokens in the prompt")
            tt, hh, ww = torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij")
            pos[0, i:i + count] = tt.reshape(-1) + cur
            pos[1, i:i + count] = hh.reshape(-1) + cur
            pos[2, i:i + count] = ww.reshape(-1) + cur
            cur += max(gh, gw)
            i += count
            k += 1
        if k != len(items):
            raise ValueError(f"the prompt holds {k} image(s) but {len(items)} were given")
        delta = int(pos.max()) + 1 - n if n else 0
        return pos, delta
