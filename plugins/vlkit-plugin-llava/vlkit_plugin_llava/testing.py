"""References for the conformance suite (test support; imports transformers).

* llava-hf layouts: :class:`vlkit.testing.conformance.TransformersReference` with
  ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``.
* the original layout: :class:`OriginalLlavaReference` — the transformers twin written from
  the same weights, fed the prompt and pixels the ORIGINAL LLaVA code makes, re-derived here
  from LLaVA's ``conversation.py`` / ``mm_utils.py`` without using this plugin's code:
  ``conv_llava_v1`` (``SeparatorStyle.TWO``, sep " ", sep2 "</s>", the "human" system
  prompt), ``tokenizer_image_token`` (text between ``<image>`` markers tokenized chunk by
  chunk), 1.5 ``pad`` preprocessing (transformers' ``LlavaImageProcessor(do_pad=True)``, which
  pads with the mean colour exactly as ``expand2square``) and 1.6 ``anyres`` (transformers'
  ``LlavaNextImageProcessor`` with the pinpoints turned from (w, h) to (h, w)).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlkit.testing.conformance import Reference
from vlkit.testing.conversations import sep_two_prompt, tokenizer_image_token

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def llava_v1_prompt(messages: list[dict[str, Any]], system: str = LLAVA_V1_SYSTEM) -> str:
    """LLaVA's ``conv_llava_v1.get_prompt()`` after ``append_message(ASSISTANT, None)``."""
    return sep_two_prompt(messages, system)


def mistral_instruct_prompt(messages: list[dict[str, Any]], system: str = "") -> str:
    """LLaVA's ``conv_mistral_instruct.get_prompt()`` (``SeparatorStyle.LLAMA_2``, sep ``""``,
    sep2 ``</s>``) after ``append_message(ASSISTANT, None)``; images as in :func:`llava_v1_prompt`."""
    if messages and messages[0]["role"] == "system":
        system = "".join(p["text"] for p in messages[0]["content"] if p["type"] == "text")
        messages = messages[1:]
    ret = ""
    for i, m in enumerate(messages):
        n_img = sum(1 for p in m["content"] if p["type"] == "image")
        text = "<image>\n" * n_img + "".join(p["text"] for p in m["content"] if p["type"] == "text")
        if i == 0 and system:
            text = f"<<SYS>>\n{system}\n<</SYS>>\n\n" + text
        ret += f"[INST] {text} [/INST]" if m["role"] == "user" else " " + text + " </s>"
    return ret


class OriginalLlavaReference:
    """The reference for an original-layout checkpoint, through its transformers twin."""

    def __init__(self, original_dir: str | Path, twin_dir: str | Path) -> None:
        import torch
        import transformers
        from transformers import AutoTokenizer

        self.cfg = json.loads((Path(original_dir) / "config.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(str(original_dir))
        twin_cfg = json.loads((Path(twin_dir) / "config.json").read_text())
        self.next = self.cfg.get("image_aspect_ratio") == "anyres"
        cls = transformers.LlavaNextForConditionalGeneration if self.next else transformers.LlavaForConditionalGeneration
        self.model = cls.from_pretrained(str(twin_dir), dtype=torch.float32).eval()
        self.image_token_id = int(twin_cfg["image_token_index"])
        tower = Path(self.cfg["mm_vision_tower"])
        pp = json.loads((tower / "preprocessor_config.json").read_text())
        common = {
            "size": pp["size"], "crop_size": pp["crop_size"], "image_mean": pp["image_mean"],
            "image_std": pp["image_std"], "resample": pp.get("resample", 3),
        }
        if self.next:
            pin_hw = [[h, w] for w, h in self.cfg["image_grid_pinpoints"]]
            self.processor = _pil_processor("LlavaNextImageProcessor", image_grid_pinpoints=pin_hw, **common)
        elif self.cfg.get("image_aspect_ratio") == "pad":
            self.processor = _pil_processor("LlavaImageProcessor", do_pad=True, **common)
        else:
            self.processor = _pil_processor("CLIPImageProcessor", **common)

    def __call__(self, messages: list[dict[str, Any]], max_new_tokens: int) -> Reference:
        import torch

        images = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
        mistral = "LlavaMistralForCausalLM" in (self.cfg.get("architectures") or [])
        prompt = mistral_instruct_prompt(messages) if mistral else llava_v1_prompt(messages)
        ids = tokenizer_image_token(prompt, self.tokenizer)
        kwargs: dict[str, Any] = {}
        if images:
            px = self.processor(images=images, return_tensors="pt")
            kwargs["pixel_values"] = px["pixel_values"]
            if self.next:
                kwargs["image_sizes"] = px["image_sizes"]
            with torch.inference_mode():
                feats = self.model.get_image_features(**kwargs).pooler_output
            counts = [f.shape[0] for f in feats]
            expanded: list[int] = []
            k = 0
            for t in ids:
                if t == -200:
                    expanded += [self.image_token_id] * counts[k]
                    k += 1
                else:
                    expanded.append(t)
            ids = expanded
        input_ids = torch.tensor([ids])
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, **kwargs).logits[0].float()
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs,
                max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return Reference(ids, self.image_token_id, out[0, len(ids):].tolist(), logits)


def _pil_processor(name: str, **kwargs: Any) -> Any:
    import transformers

    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    return cls(**{k: v for k, v in kwargs.items() if k not in ("image_processor_type", "processor_class")})
