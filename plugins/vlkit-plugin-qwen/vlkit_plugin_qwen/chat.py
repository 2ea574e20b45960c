"""Qwen2-VL / Qwen2.5-VL's ChatTemplateWrapper.

The checkpoint's own chat template (ChatML, ``You are a helpful assistant.`` as the default
system prompt) writes ``<|vision_start|><|image_pad|><|vision_end|>`` for each image part; each
becomes ``<|vision_start|>`` + ``<|image_pad|>`` × n + ``<|vision_end|>``, n = t·h·w / merge²
of the image's patch grid, as ``Qwen2VLProcessor`` expands it. Replies end on ``<|im_end|>``.
"""

from __future__ import annotations

from typing import Any

from vlkit.chat import ChatTemplateWrapper

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"


class Qwen2VLChatTemplate(ChatTemplateWrapper):
    image_marker = VISION_START + IMAGE_PAD + VISION_END
    image_token = IMAGE_PAD
    stop_words = ("<|im_end|>",)

    def image_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        return VISION_START + IMAGE_PAD * num_tokens + VISION_END
