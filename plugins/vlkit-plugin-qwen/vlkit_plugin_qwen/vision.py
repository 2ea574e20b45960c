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

Video (``video_input = "native"``): frames are sampled as transformers' ``Qwen2VLVideoProcessor``
samples by ``fps`` (default 2; ``num_frames`` instead rounds to the temporal patch size), each
resized and normalized by the checkpoint's image processor to one size (the video's own
``min_pixels`` / ``max_pixels``: ``video_preprocessor_config.json``, else 128·28² and 768·28²),
padded to a multiple of ``temporal_patch_size`` by repeating the last frame, and packed
``temporal_patch_size`` frames per patch (the video processor's layout). Its grid is
``(t, h, w)``; positions: Qwen2-VL counts ``t`` by one per temporal patch, Qwen2.5-VL by
``tokens_per_second × second_per_grid`` (``temporal_patch_size / sample fps``). The text
after an image or a video continues at the largest position so far + 1 (the original rule:
Qwen's code, transformers 4.x, vLLM; transformers 5.x continues at ``start + max(h', w')``,
lower when a video's time positions pass its spatial ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.plugin import ImageItem, VisionModel
from vlkit_plugin_qwen import weights

OPTIONS = ("min_pixels", "max_pixels")
VIDEO_OPTIONS = ("fps", "num_frames", "min_pixels", "max_pixels", "min_frames", "max_frames")
_IGNORED_OPTIONS = ("detail",)
#: Qwen2VLVideoProcessor's defaults
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28
VIDEO_FPS, VIDEO_MIN_FRAMES, VIDEO_MAX_FRAMES = 2.0, 4, 768


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
    """Qwen2-VL / Qwen2.5-VL vision side; one ``[t·h·w / merge², lm_hidden]`` tensor per image or video."""

    video_input = "native"

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Path, tokenizer: Any = None) -> None:
        super().__init__(family, hf_config, model_path, tokenizer)
        vc = hf_config.get("vision_config") or {}
        text = hf_config.get("text_config") or {}
        self.architecture = (hf_config.get("architectures") or ["Qwen2VLForConditionalGeneration"])[0]
        self.merge_size = int(vc.get("spatial_merge_size", 2))
        self.temporal_patch_size = int(vc.get("temporal_patch_size", 2))
        self.in_channels = int(vc.get("in_channels", vc.get("in_chans", 3)))
        self.image_token_id = hf_config.get("image_token_id", text.get("image_token_id"))
        self.video_token_id = hf_config.get("video_token_id", text.get("video_token_id"))
        # Qwen2.5-VL spaces time positions by tokens_per_second x seconds per temporal patch
        self.tokens_per_second = (float(vc.get("tokens_per_second", 2))
                                  if self.architecture == "Qwen2_5_VLForConditionalGeneration" else None)

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

    # -- video -------------------------------------------------------------------------------
    def video_settings(self) -> dict[str, Any]:
        """The checkpoint's video preprocessing (``video_preprocessor_config.json``), else
        ``Qwen2VLVideoProcessor``'s defaults."""
        import json

        cfg: dict[str, Any] = {}
        f = self.model_path / "video_preprocessor_config.json"
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except ValueError:
                cfg = {}
        size = cfg.get("size") if isinstance(cfg.get("size"), dict) else {}
        return {
            "min_pixels": int(cfg.get("min_pixels") or size.get("shortest_edge") or VIDEO_MIN_PIXELS),
            "max_pixels": int(cfg.get("max_pixels") or size.get("longest_edge") or VIDEO_MAX_PIXELS),
            "fps": float(cfg.get("fps") or VIDEO_FPS),
            "min_frames": int(cfg.get("min_frames") or VIDEO_MIN_FRAMES),
            "max_frames": int(cfg.get("max_frames") or VIDEO_MAX_FRAMES),
        }

    def _video_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(opts) - set(VIDEO_OPTIONS) - set(_IGNORED_OPTIONS))
        if unknown:
            raise ValueError(f"unknown Qwen2-VL video option(s) {unknown}; accepted: {list(VIDEO_OPTIONS)}")
        out = self.video_settings()
        for key in ("min_pixels", "max_pixels", "min_frames", "max_frames", "num_frames"):
            v = opts.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"video option {key} must be a positive integer, got {v!r}")
        fps = opts.get("fps")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0):
            raise ValueError(f"video option fps must be a positive number, got {fps!r}")
        out.update({k: v for k, v in opts.items() if k in VIDEO_OPTIONS and v is not None})
        if out["min_pixels"] > out["max_pixels"]:
            raise ValueError(f"video min_pixels {out['min_pixels']} > max_pixels {out['max_pixels']}")
        return out

    def sample_video_frames(self, metadata: Any, options: dict[str, Any]) -> list[int]:
        """``Qwen2VLVideoProcessor.sample_frames``: ``num_frames`` rounded to the temporal patch
        size, or ``fps`` frames a second (default 2) within ``[min_frames, max_frames]``, floored
        to the temporal patch size; then evenly spaced indices."""
        import math

        import torch

        if options.get("fps") is not None and options.get("num_frames") is not None:
            raise ValueError("video options fps and num_frames are mutually exclusive; give one")
        o = self._video_options(options)
        tps, total = self.temporal_patch_size, int(metadata.total_frames)
        if options.get("num_frames") is not None:
            n = round(int(options["num_frames"]) / tps) * tps
        else:
            if not metadata.fps:
                raise ValueError("the video's frame rate is unknown: give num_frames instead of fps")
            max_frames = math.floor(min(o["max_frames"], total) / tps) * tps
            n = total / metadata.fps * float(o["fps"])
            n = min(max(n, o["min_frames"]), max_frames, total)
            n = math.floor(n / tps) * tps
        n = max(int(n), min(total, tps))  # a video shorter than one temporal patch keeps its frames
        if n > total:
            raise ValueError(f"cannot sample {n} frames from a video of {total}; lower num_frames or fps")
        return torch.arange(0, total, total / n).int().tolist()

    def preprocess_video(self, video: Any, options: dict[str, Any]) -> ImageItem:
        """Each frame resized and normalized by the image processor (one patch per frame), then
        packed ``temporal_patch_size`` frames per patch as ``Qwen2VLVideoProcessor.patchify``."""
        import torch

        if self.preprocessor is None:
            self.build_preprocessor()
        o = self._video_options(options)
        size = {"shortest_edge": o["min_pixels"], "longest_edge": o["max_pixels"]}
        frames = list(video.frames)
        if not frames:
            raise ValueError("the video has no frames")
        first = frames[0].size
        tps, grid, per_frame = self.temporal_patch_size, None, []
        for f in frames:
            if f.size != first:
                f = f.resize(first)
            out = self.preprocessor(images=[f], size=size, return_tensors="pt")
            g = tuple(int(x) for x in out["image_grid_thw"][0].tolist())
            grid = grid or g
            px = torch.as_tensor(out["pixel_values"])  # [h*w, C * tps * p * p], the frame repeated tps times
            per_frame.append(px.reshape(px.shape[0], self.in_channels, tps, -1)[:, :, 0])  # [h*w, C, p*p]
        while len(per_frame) % tps:
            per_frame.append(per_frame[-1])
        gt = len(per_frame) // tps
        groups = [torch.stack(per_frame[i * tps:(i + 1) * tps], dim=2).reshape(per_frame[0].shape[0], -1)
                  for i in range(gt)]
        pixel_values = torch.cat(groups)
        _, gh, gw = grid
        n = gt * gh * gw // (self.merge_size ** 2)
        fps = video.sample_fps
        second_per_grid = tps / fps if fps else 1.0
        return ImageItem(
            num_tokens=n,
            data={"pixel_values": pixel_values, "grid_thw": (gt, gh, gw)},
            options=dict(options),
            meta={"grid_thw": (gt, gh, gw), "merge_size": self.merge_size, "kind": "video",
                  "second_per_grid": second_per_grid, "frames": len(frames), "fps": fps,
                  "min_pixels": o["min_pixels"], "max_pixels": o["max_pixels"], "size": tuple(first)},
            num_tiles=gt,
        )

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
        """``([3, len(input_ids)] LongTensor, delta)``: the n-th run of image tokens is the n-th
        image of ``items``, the n-th run of video tokens the n-th video (as ``get_rope_index``
        takes ``image_grid_thw`` and ``video_grid_thw``); text after each continues at the
        largest position so far + 1."""
        import torch

        queues = {"image": [it for it in items if it.kind != "video"], "video": [it for it in items if it.kind == "video"]}
        tokens = {self.image_token_id: "image"}
        if self.video_token_id is not None:
            tokens[self.video_token_id] = "video"
        n = len(input_ids)
        pos = torch.empty(3, n, dtype=torch.long)
        cur, i, m = 0, 0, self.merge_size
        used = {"image": 0, "video": 0}
        while i < n:
            kind = tokens.get(input_ids[i])
            if kind is None:
                j = i
                while j < n and input_ids[j] not in tokens:
                    j += 1
                pos[:, i:j] = torch.arange(cur, cur + j - i)
                cur += j - i
                i = j
                continue
            k = used[kind]
            if k >= len(queues[kind]):
                raise ValueError(f"the prompt has more {kind} tokens than the {len(queues[kind])} {kind}(s) fill")
            item = queues[kind][k]
            t, h, w = item.meta["grid_thw"]
            gt, gh, gw = t, h // m, w // m
            count = gt * gh * gw
            tid = input_ids[i]
            if input_ids[i:i + count] != [tid] * count:
                raise ValueError(f"{kind} {k} needs {count} contiguous {kind} tokens in the prompt")
            t_index = torch.arange(gt)
            if kind == "video" and self.tokens_per_second is not None:  # Qwen2.5-VL: time in seconds
                t_index = (t_index * self.tokens_per_second * float(item.meta.get("second_per_grid", 1.0))).long()
            tt, hh, ww = torch.meshgrid(t_index, torch.arange(gh), torch.arange(gw), indexing="ij")
            pos[0, i:i + count] = tt.reshape(-1) + cur
            pos[1, i:i + count] = hh.reshape(-1) + cur
            pos[2, i:i + count] = ww.reshape(-1) + cur
            cur = int(pos[:, i:i + count].max()) + 1
            i += count
            used[kind] += 1
        for kind, q in queues.items():
            if used[kind] != len(q):
                raise ValueError(f"the prompt holds {used[kind]} {kind}(s) but {len(q)} were given")
        delta = int(pos.max()) + 1 - n if n else 0
        return pos, delta
