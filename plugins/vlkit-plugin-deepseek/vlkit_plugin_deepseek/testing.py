"""References for the conformance suite (test support; imports transformers).

* transformers layouts: :class:`vlkit.testing.conformance.TransformersReference` with
  ``DeepseekVLForConditionalGeneration`` / ``DeepseekVLHybridForConditionalGeneration``.
* the original layout: :class:`OriginalDeepseekReference` — the transformers twin written from
  the same weights, fed the prompt and pixels the ORIGINAL DeepSeek-VL code makes, re-derived
  here from ``deepseek_vl/utils/conversation.py``, ``models/processing_vlm.py`` and
  ``models/image_processing_vlm.py`` without this plugin's code: :func:`original_prompt`
  (``SeparatorStyle.DeepSeek``), :func:`original_input_ids` (``tokenizer.encode`` then each
  ``<image_placeholder>`` id repeated ``num_image_tokens`` times), :func:`original_pixels`
  (PIL bicubic resize with truncated sizes, ``expand2square``, transformers' ``rescale`` and
  ``normalize`` as ``VLMImageProcessor`` calls them) and, for the 7b, the hybrid tower's own
  steps (antialiased bilinear resize to SigLIP's size — torchvision's ``Resize(antialias=True)``
  on a tensor is ``F.interpolate(..., antialias=True)`` —, then each tower's normalisation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlkit.testing.conformance import Reference

SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
IMAGE_TAG = "<image_placeholder>"


def _content_text(content: Any) -> str:
    """A message's content as the original's users write it: ``<image_placeholder>`` where each
    image goes (images first, nothing between them and the text, as in the README)."""
    if isinstance(content, str):
        return content
    return "".join(IMAGE_TAG if p["type"] == "image" else p["text"] for p in content)


def original_prompt(messages: list[dict[str, Any]], system: str = SYSTEM, eos: str = "<｜end▁of▁sentence｜>") -> str:
    """``VLChatProcessor.apply_sft_template_for_multi_turn_prompts`` for ``messages`` plus the
    empty assistant turn ``generate`` adds."""
    if messages and messages[0]["role"] == "system":
        system = _content_text(messages[0]["content"])
        messages = messages[1:]
    turns = [("User" if m["role"] == "user" else "Assistant", _content_text(m["content"]).strip()) for m in messages]
    turns.append(("Assistant", ""))
    seps = ["\n\n", eos]
    ret = "" if not system else system + seps[0]
    for i, (role, message) in enumerate(turns):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"
    return ret.strip()


def original_input_ids(prompt: str, tokenizer: Any, num_image_tokens: int) -> list[int]:
    ids = tokenizer.encode(prompt)
    tag = tokenizer.convert_tokens_to_ids(IMAGE_TAG)
    out: list[int] = []
    for t in ids:
        out.extend([t] * num_image_tokens if t == tag else [t])
    return out


def original_pixels(image: Any, pre: dict[str, Any]) -> Any:
    """``VLMImageProcessor(**pre)([image]).pixel_values[0]`` as a float32 tensor."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers.image_transforms import normalize, rescale

    size, min_size = pre["image_size"], pre.get("min_size", 14)
    mean = pre.get("image_mean")
    width, height = image.size
    max_size = max(width, height)
    new = [max(int(height / max_size * size), min_size), max(int(width / max_size * size), min_size)]
    img = image.resize((new[1], new[0]), Image.BICUBIC)
    bg = (127, 127, 127) if mean is None else tuple(int(x * 255) for x in mean)
    w, h = img.size
    if w != h:
        square = Image.new(img.mode, (max(w, h), max(w, h)), bg)
        square.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
        img = square
    x = np.transpose(np.array(img), (2, 0, 1))
    x = rescale(x, scale=pre.get("rescale_factor", 1 / 255), input_data_format="channels_first")
    if pre.get("do_normalize", True):
        x = normalize(x, mean=mean, std=pre["image_std"], input_data_format="channels_first")
    return torch.from_numpy(np.ascontiguousarray(x)).float()


def hybrid_tower_inputs(pixels: Any, cfg: dict[str, Any]) -> tuple[Any, Any]:
    """``(high_res_pixel_values, pixel_values)`` for transformers' hybrid model, made the way the
    original ``HybridVisionTower.forward`` makes its two towers' inputs from ``pixels``."""
    import torch
    import torch.nn.functional as F

    p = cfg["vision_config"]["params"]
    high_cfg, low_cfg = p["high_res_cfg"], p["low_res_cfg"]
    x = pixels.unsqueeze(0) if pixels.dim() == 3 else pixels
    low = F.interpolate(x, size=(low_cfg["image_size"],) * 2, mode="bilinear", align_corners=False, antialias=True)

    def norm(t: Any, c: dict[str, Any]) -> Any:
        if c.get("pixel_mean") is None:
            return t
        return (t - torch.tensor(c["pixel_mean"]).view(1, 3, 1, 1)) / torch.tensor(c["pixel_std"]).view(1, 3, 1, 1)

    return norm(x, high_cfg), norm(low, low_cfg)


class OriginalDeepseekReference:
    """The reference for an original-layout checkpoint, through its transformers twin."""

    def __init__(self, original_dir: str | Path, twin_dir: str | Path) -> None:
        import torch
        import transformers

        d = Path(original_dir)
        self.cfg = json.loads((d / "config.json").read_text())
        self.pre = json.loads((d / "preprocessor_config.json").read_text())
        self.num_image_tokens = json.loads((d / "processor_config.json").read_text())["num_image_tokens"]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(d))
        self.hybrid = self.cfg["vision_config"]["cls"] == "HybridVisionTower"
        cls = (transformers.DeepseekVLHybridForConditionalGeneration if self.hybrid
               else transformers.DeepseekVLForConditionalGeneration)
        self.model = cls.from_pretrained(str(twin_dir), dtype=torch.float32).eval()
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TAG)

    def inputs(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from vlkit.testing import as_vlkit_decodes  # the original code gets what vlkit decodes

        prompt = original_prompt(messages, eos=self.tokenizer.eos_token)
        ids = original_input_ids(prompt, self.tokenizer, self.num_image_tokens)
        images = [p["image"] for m in messages if not isinstance(m["content"], str)
                  for p in m["content"] if p["type"] == "image"]
        out: dict[str, Any] = {"input_ids": torch.tensor([ids])}
        if images:
            px = torch.stack([original_pixels(as_vlkit_decodes(im), self.pre) for im in images])
            if self.hybrid:
                out["high_res_pixel_values"], out["pixel_values"] = hybrid_tower_inputs(px, self.cfg)
            else:
                out["pixel_values"] = px
        return out

    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int) -> Reference:
        import torch

        inputs = self.inputs(messages)
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            logits = self.model(**inputs).logits[0].float()
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=self.tokenizer.eos_token_id)
        return Reference(inputs["input_ids"][0].tolist(), self.image_token_id, out[0, n:].tolist(), logits)
