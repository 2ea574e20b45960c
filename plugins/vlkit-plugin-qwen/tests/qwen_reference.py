"""The reference the Qwen tests compare against: transformers' model fed what ``Qwen2VLProcessor``
would give it.

``Qwen2VLProcessor`` itself cannot be built here (its video processor needs torchvision), so its
text path is done by hand, as the processor does it: the checkpoint's chat template rendered
by the tokenizer (``apply_chat_template``), each ``<|image_pad|>`` replaced by
``<|image_pad|>`` × (t·h·w / merge²) of that image's grid (``Qwen2VLProcessor.replace_image_token``),
``mm_token_type_ids`` = 1 at image tokens (what the processor returns for M-RoPE); pixels
from ``Qwen2VLImageProcessorPil``. Generation is transformers' ``generate`` (greedy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlkit.testing.conformance import Reference

IMAGE_PAD = "<|image_pad|>"


class QwenReference:
    def __init__(self, model_dir: str | Path, model_cls: Any) -> None:
        from transformers import AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir))
        self.model = model_cls.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        self.image_token_id = self.model.config.image_token_id
        gen = json.loads((Path(model_dir) / "generation_config.json").read_text())
        self.eos = gen["eos_token_id"]

    def inputs(self, messages: list[dict[str, Any]], **image_kwargs: Any) -> dict[str, Any]:
        text, out = self.text_and_images(messages, **image_kwargs)
        ids = self.tokenizer(text, return_tensors="pt")
        out["input_ids"], out["attention_mask"] = ids["input_ids"], ids["attention_mask"]
        out["mm_token_type_ids"] = (ids["input_ids"] == self.image_token_id).int()
        return out

    def text_and_images(self, messages: list[dict[str, Any]], **image_kwargs: Any) -> tuple[str, dict[str, Any]]:
        """The rendered prompt with image tokens expanded, and the image inputs."""
        images = [p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"]
                  if p["type"] == "image"]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out: dict[str, Any] = {}
        if images:
            px = self.image_processor(images=images, return_tensors="pt", **image_kwargs)
            out["pixel_values"], out["image_grid_thw"] = px["pixel_values"], px["image_grid_thw"]
            merge = self.image_processor.merge_size ** 2
            pieces = text.split(IMAGE_PAD)
            assert len(pieces) - 1 == len(images)
            text = pieces[0]
            for grid, piece in zip(out["image_grid_thw"], pieces[1:]):
                text += IMAGE_PAD * int(grid.prod() // merge) + piece
        return text, out

    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int, **image_kwargs: Any) -> Reference:
        inputs = self.inputs(messages, **image_kwargs)
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
            self.model.model.rope_deltas = None
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                num_beams=1, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos,
            )
        return Reference(inputs["input_ids"][0].tolist(), self.image_token_id, out[0, n:].tolist(), logits)


# -- video -----------------------------------------------------------------------------------------
VIDEO_PAD = "<|video_pad|>"


def smart_resize_dims(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def video_pixels(frames: list[Any], min_pixels: int, max_pixels: int, mean: list[float], std: list[float],
                 patch: int = 14, merge: int = 2, tps: int = 2) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """``Qwen2VLVideoProcessor``'s inputs, computed as it does (it cannot be built here): every
    frame resized to one ``smart_resize`` size (bicubic, here PIL's), rescaled and normalized,
    the frame count padded to ``tps`` with the last frame, then its ``patchify`` layout
    ``view(gt, tps, C, gh/m, m, p, gw/m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)``."""
    import numpy as np
    from PIL import Image

    w, h = frames[0].size
    rh, rw = smart_resize_dims(h, w, min_pixels, max_pixels, patch * merge)
    arr = np.stack([np.asarray(f.convert("RGB").resize((rw, rh), Image.BICUBIC), dtype=np.float32) for f in frames])
    arr = (arr / 255.0 - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    v = torch.from_numpy(arr).permute(0, 3, 1, 2)  # T, C, H, W
    if pad := -v.shape[0] % tps:
        v = torch.cat([v, v[-1:].expand(pad, -1, -1, -1)])
    gt, gh, gw = v.shape[0] // tps, rh // patch, rw // patch
    c = v.shape[1]
    patches = v.reshape(gt, tps, c, gh // merge, merge, patch, gw // merge, merge, patch)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, c * tps * patch * patch)
    return patches, (gt, gh, gw)


def sample_frame_indices(total: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 768,
                         tps: int = 2) -> list[int]:
    """``Qwen2VLVideoProcessor.sample_frames`` with ``fps`` (transcribed)."""
    import math

    max_frames = math.floor(min(max_frames, total) / tps) * tps
    n = total / video_fps * fps
    n = min(max(n, min_frames), max_frames, total)
    n = math.floor(n / tps) * tps
    return torch.arange(0, total, total / n).int().tolist()


def original_rope_index(input_ids: list[int], image_token_id: int, video_token_id: int,
                        grids: list[tuple[str, tuple[int, int, int], float]], merge: int,
                        tokens_per_second: float | None) -> torch.Tensor:
    """The original ``get_rope_index`` (Qwen's code, transformers 4.x, vLLM), transcribed: after
    each image or video the text starts at the largest position so far + 1. ``grids``: per
    image/video in prompt order, ``(kind, (t, h, w), second_per_grid)``."""
    pos_list, st, i, n, g = [], 0, 0, len(input_ids), iter(grids)
    while i < n:
        if input_ids[i] in (image_token_id, video_token_id):
            kind, (t, h, w), spg = next(g)
            lt, lh, lw = t, h // merge, w // merge
            t_index = torch.arange(lt).view(-1, 1).expand(-1, lh * lw)
            if kind == "video" and tokens_per_second is not None:
                t_index = (t_index * spg * tokens_per_second).long()
            t_index = t_index.flatten()
            h_index = torch.arange(lh).view(1, -1, 1).expand(lt, -1, lw).flatten()
            w_index = torch.arange(lw).view(1, 1, -1).expand(lt, lh, -1).flatten()
            block = torch.stack([t_index, h_index, w_index]) + st
            pos_list.append(block)
            st = int(block.max()) + 1
            i += lt * lh * lw
        else:
            j = i
            while j < n and input_ids[j] not in (image_token_id, video_token_id):
                j += 1
            pos_list.append(torch.arange(j - i).view(1, -1).expand(3, -1) + st)
            st += j - i
            i = j
    return torch.cat(pos_list, dim=1)


class QwenVideoReference(QwenReference):
    """:class:`QwenReference` with videos: ``{"type": "video", "video": [frames], "fps": f}``
    parts become ``pixel_values_videos`` / ``video_grid_thw`` (:func:`video_pixels`), the
    ``<|video_pad|>`` expansion, ``mm_token_type_ids`` 2 at video tokens and, for Qwen2.5-VL,
    ``second_per_grid_ts = temporal_patch_size / fps``."""

    def __init__(self, model_dir: str | Path, model_cls: Any) -> None:
        super().__init__(model_dir, model_cls)
        vcfg = json.loads((Path(model_dir) / "video_preprocessor_config.json").read_text())
        self.video_min, self.video_max = vcfg["size"]["shortest_edge"], vcfg["size"]["longest_edge"]
        self.video_token_id = self.model.config.video_token_id
        self.qwen25 = "2_5" in type(self.model).__name__

    def inputs(self, messages: list[dict[str, Any]], **image_kwargs: Any) -> dict[str, Any]:
        videos = [p for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "video"]
        if not videos:
            return super().inputs(messages, **image_kwargs)
        text, out = self.text_and_images(messages, **image_kwargs)
        pix, grids, spg = [], [], []
        for v in videos:
            px, grid = video_pixels(v["video"], self.video_min, self.video_max, self.image_processor.image_mean,
                                    self.image_processor.image_std)
            pix.append(px)
            grids.append(grid)
            spg.append(2 / v["fps"])
        pieces = text.split(VIDEO_PAD)
        assert len(pieces) - 1 == len(videos)
        text = pieces[0] + "".join(VIDEO_PAD * (t * h * w // 4) + piece for (t, h, w), piece in zip(grids, pieces[1:]))
        ids = self.tokenizer(text, return_tensors="pt")
        out["input_ids"], out["attention_mask"] = ids["input_ids"], ids["attention_mask"]
        out["mm_token_type_ids"] = ((ids["input_ids"] == self.image_token_id).int()
                                    + 2 * (ids["input_ids"] == self.video_token_id).int())
        out["pixel_values_videos"] = torch.cat(pix)
        out["video_grid_thw"] = torch.tensor(grids)
        if self.qwen25:
            out["second_per_grid_ts"] = torch.tensor(spg)
        self.last_video_grids = [("video", g, s) for g, s in zip(grids, spg)]
        return out
