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
        ids = self.tokenizer(text, return_tensors="pt")
        out["input_ids"], out["attention_mask"] = ids["input_ids"], ids["attention_mask"]
        out["mm_token_type_ids"] = (ids["input_ids"] == self.image_token_id).int()
        return out

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
