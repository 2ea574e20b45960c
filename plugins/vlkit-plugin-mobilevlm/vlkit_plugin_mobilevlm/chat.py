"""MobileVLM's ChatTemplateWrapper: Vicuna v1 and the original's ``tokenizer_image_token``.

The prompt is MobileVLM's ``conv_vicuna_v1`` (``conv-mode v1``; core template ``vicuna-v1``):
system "A chat between a curious user and an artificial intelligence assistant. The assistant
gives helpful, detailed, and polite answers to the user's questions." then ``USER: <image>\\n...
ASSISTANT:``; user turns end with a space, assistant turns with ``</s>``.

The original tokenizer has no image token: ``mobilevlm.utils.tokenizer_image_token`` tokenizes
the text between ``<image>`` markers chunk by chunk (each chunk with its own BOS, dropped after
the first) and puts ``-200`` where each image goes. Here each image's positions hold the
tokenizer's ``unk`` id instead (the engine overwrites them with the image embeddings), so the
ids around them are exactly the original's.
"""

from __future__ import annotations

from vlkit.plugin import ChatTemplateWrapper


class MobileVLMChatTemplate(ChatTemplateWrapper):
    image_marker = "<image>"
    default_template = "vicuna-v1"
    tokenize_between_images = True  # MobileVLM keeps LLaVA's tokenizer_image_token
