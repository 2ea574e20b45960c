"""Qwen2-VL / Qwen2.5-VL's ChatTemplateWrapper.

The checkpoint's own chat template (ChatML, ``You are a helpful assistant.`` as the default
system prompt) writes ``<|vision_start|><|image_pad|><|vision_end|>`` for each image part; each
becomes ``<|vision_start|>`` + ``<|image_pad|>`` × n + ``<|vision_end|>``, n = t·h·w / merge²
of the image's patch grid, as ``Qwen2VLProcessor`` expands it; videos the same with
``<|video_pad|>``. Replies end on ``<|im_end|>``.
"""

from __future__ import annotations

from typing import Any

from vlkit.plugin import ChatTemplateWrapper

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


class Qwen2VLChatTemplate(ChatTemplateWrapper):
    """Images as above; each video part is ``<|vision_start|><|video_pad|><|vision_end|>`` in the
    template, expanded to ``<|video_pad|>`` × t·h·w / merge² of its temporal-patch grid."""

    image_marker = VISION_START + IMAGE_PAD + VISION_END
    image_token = IMAGE_PAD
    video_marker = VISION_START + VIDEO_PAD + VISION_END
    video_token = VIDEO_PAD
    stop_words = ("<|im_end|>",)

    def image_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        return VISION_START + IMAGE_PAD * num_tokens + VISION_END

    def video_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        return VISION_START + VIDEO_PAD * num_tokens + VISION_END


class QwenVLChatTemplate(ChatTemplateWrapper):
    """Qwen-VL-Chat: ChatML as its ``make_context`` builds it (``You are a helpful assistant.``),
    each image of a message written ``Picture {i}: <img>…</img>\\n`` (``from_list_format``,
    numbered per message), the span between ``<img>`` and ``</img>`` 256 positions long
    (``IMG_TOKEN_SPAN``), filled by the resampler's output. Replies stop on ``<|im_end|>`` /
    ``<|im_start|>`` (``chat()``'s stop words) and ``<|endoftext|>``."""

    image_marker = "<img></img>"
    image_token = "<imgpad>"
    default_template = "qwen-vl-chat"
    stop_words = ("<|im_end|>", "<|im_start|>")

    def image_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        return "<img>" + "<imgpad>" * num_tokens + "</img>"
