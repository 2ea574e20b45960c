"""DeepSeek-VL's ChatTemplateWrappers.

* transformers layouts (:class:`DeepseekHFChatTemplate`): the checkpoint's own chat template
  (``chat_template.jinja`` / ``.json``), so that the prompt ids equal
  ``processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``; the
  template writes ``<image_placeholder>`` for each image part and the processor repeats it
  ``num_image_tokens`` times.
* the original layout (:class:`DeepseekOriginalChatTemplate`): the family template
  ``deepseek-vl`` (the original ``deepseek`` conversation with VLChatProcessor's system prompt).
  The original tokenizes the prompt with one ``<image_placeholder>`` per image and then repeats
  that id; ``<image_placeholder>`` is a special token, so tokenizing the expanded text gives
  the same ids.
"""

from __future__ import annotations

from typing import Any

from vlkit.plugin import ChatTemplateWrapper

IMAGE_PLACEHOLDER = "<image_placeholder>"


class DeepseekHFChatTemplate(ChatTemplateWrapper):
    image_marker = IMAGE_PLACEHOLDER

    def template_variables(self) -> dict[str, Any]:
        out = super().template_variables()
        out["image_token"] = IMAGE_PLACEHOLDER
        return out


class DeepseekOriginalChatTemplate(DeepseekHFChatTemplate):
    default_template = "deepseek-vl"
