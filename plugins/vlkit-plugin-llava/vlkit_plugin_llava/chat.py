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

from vlkit.chat import ChatTemplateWrapper, PromptInputs, TemplateError
from vlkit.messages import Conversation


class LlavaHFChatTemplate(ChatTemplateWrapper):
    image_marker = "<image>"

    def template_messages(self, conv: Conversation) -> list[dict[str, Any]]:
        msgs = super().template_messages(conv)
        return [_inline_placed_images(m, self.image_marker) for m in msgs]


def _inline_placed_images(msg: dict[str, Any], marker: str) -> dict[str, Any]:
    content = msg.get("content")
    if not isinstance(content, list) or not any(p.get("type") == "image" and p.get("placed") for p in content):
        return msg
    parts: list[dict[str, Any]] = []
    for p in content:
        if p.get("type") == "text" or (p.get("type") == "image" and p.get("placed")):
            text = p["text"] if p.get("type") == "text" else marker
            if parts and parts[-1].get("type") == "text":
                parts[-1] = {"type": "text", "text": parts[-1]["text"] + text}
            else:
                parts.append({"type": "text", "text": text})
        else:
            parts.append(p)
    return {**msg, "content": parts}


class LlavaOriginalChatTemplate(LlavaHFChatTemplate):
    default_template = "llava-v1"

    def __init__(self, family: Any, hf_config: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        from vlkit_plugin_llava.layout import ORIGINAL_LLAVA_MISTRAL

        if ORIGINAL_LLAVA_MISTRAL in ((hf_config or {}).get("architectures") or []):
            self.default_template = "llava-mistral-instruct"  # LLaVA's conv_mistral_instruct
        super().__init__(family, hf_config, *args, **kwargs)

    @property
    def image_token_id(self) -> int:
        tok = self.tokenizer
        tid = tok.convert_tokens_to_ids(self.image_marker)
        if isinstance(tid, int) and tid != getattr(tok, "unk_token_id", None) and tid >= 0:
            return tid
        unk = getattr(tok, "unk_token_id", None)
        return int(unk) if unk is not None else 0

    def encode(
        self, conv: Conversation, num_image_tokens: list[int], metas: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> PromptInputs:
        text = self.render(conv, add_generation_prompt)
        chunks = text.split(self.image_marker)
        if len(chunks) - 1 != len(num_image_tokens):
            raise TemplateError(f"prompt has {len(chunks) - 1} image markers for {len(num_image_tokens)} images")
        tok = self.tokenizer
        bos = getattr(tok, "bos_token_id", None)
        image_id = self.image_token_id
        ids: list[int] = []
        ranges: list[tuple[int, int]] = []
        for i, chunk in enumerate(chunks):
            piece = list(tok(chunk).input_ids)  # as tokenizer_image_token: each chunk on its own
            if i > 0 and piece and bos is not None and piece[0] == bos:
                piece = piece[1:]
            ids.extend(piece)
            if i < len(num_image_tokens):
                ranges.append((len(ids), len(ids) + num_image_tokens[i]))
                ids.extend([image_id] * num_image_tokens[i])
        prompt = self.expand_images(text, num_image_tokens, metas) if num_image_tokens else text
        return PromptInputs(prompt, ids, ranges)
