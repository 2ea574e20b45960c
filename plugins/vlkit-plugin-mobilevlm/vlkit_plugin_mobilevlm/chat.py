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

from typing import Any

from vlkit.chat import ChatTemplateWrapper, PromptInputs, TemplateError
from vlkit.messages import Conversation


class MobileVLMChatTemplate(ChatTemplateWrapper):
    image_marker = "<image>"
    default_template = "vicuna-v1"

    @property
    def image_token_id(self) -> int:
        tok = self.tokenizer
        unk = getattr(tok, "unk_token_id", None)
        tid = tok.convert_tokens_to_ids(self.image_marker)
        if isinstance(tid, int) and tid >= 0 and tid != unk:
            return tid
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
            piece = list(tok(chunk).input_ids)
            if i > 0 and piece and bos is not None and piece[0] == bos:
                piece = piece[1:]
            ids.extend(piece)
            if i < len(num_image_tokens):
                ranges.append((len(ids), len(ids) + num_image_tokens[i]))
                ids.extend([image_id] * num_image_tokens[i])
        prompt = self.expand_images(text, num_image_tokens, metas) if num_image_tokens else text
        return PromptInputs(prompt, ids, ranges)

