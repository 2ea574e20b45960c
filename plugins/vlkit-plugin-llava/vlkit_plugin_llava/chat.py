"""LLaVA's ChatTemplateWrappers.

* transformers layouts (:class:`LlavaHFChatTemplate`): the checkpoint's own chat template
  (``chat_template.jinja`` / ``.json``), so that the prompt ids equal
  ``processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``;
  each ``<image>`` becomes as many ``<image>`` tokens as the processor expands it to.
  An image the user placed with ``IMAGE_TOKEN`` is written as ``<image>`` inside the message
  text (what a transformers user writes), since llava-hf templates put image parts first.
* the original layout (:class:`LlavaOriginalChatTemplate`): LLaVA's ``llava_v1`` conversation
  (core template ``llava-v1``; ``llava-mistral-instruct``, LLaVA's ``mistral_instruct``, for
  ``LlavaMistralForCausalLM``) and LLaVA's ``tokenizer_image_token``: the text between image
  markers is tokenized piece by piece, so no token straddles an image. The original
  tokenizer has no image token; the image positions hold the tokenizer's ``unk`` id (the
  engine overwrites them with the image embeddings).
"""

from __future__ import annotations

from typing import Any

from vlkit.plugin import ChatTemplateWrapper


class LlavaHFChatTemplate(ChatTemplateWrapper):
    image_marker = "<image>"
    inline_placed_images = True  # llava-hf templates write image parts first

class LlavaOriginalChatTemplate(LlavaHFChatTemplate):
    default_template = "llava-v1"
    tokenize_between_images = True  # LLaVA's tokenizer_image_token; image positions hold unk

    def __init__(self, family: Any, hf_config: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        from vlkit_plugin_llava.layout import ORIGINAL_LLAVA_MISTRAL

        if ORIGINAL_LLAVA_MISTRAL in ((hf_config or {}).get("architectures") or []):
            self.default_template = "llava-mistral-instruct"  # LLaVA's conv_mistral_instruct
        super().__init__(family, hf_config, *args, **kwargs)
