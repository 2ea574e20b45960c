"""The LLaVA family's original prompt code, re-derived for references (test support).

LLaVA's ``conversation.py`` / ``mm_utils.py``, which MobileVLM and other LLaVA descendants copy,
written again from the published code without vlkit's templates or tokenization, so that a
plugin's reference can check vlkit's Jinja template and ``tokenize_between_images`` against it.

* :func:`sep_two_prompt` — ``SeparatorStyle.TWO`` (``conv_llava_v1``, ``conv_vicuna_v1``): sep
  ``" "`` after user turns, sep2 ``"</s>"`` after assistant turns, ``get_prompt()`` after
  ``append_message(ASSISTANT, None)``; each image of a user message as ``<image>\\n`` before its
  text (``DEFAULT_IMAGE_TOKEN + "\\n" + qs``).
* :func:`tokenizer_image_token` — each chunk between ``<image>`` markers tokenized alone (the
  first keeps its BOS, the others lose theirs), ``IMAGE_TOKEN_INDEX`` (-200) per image.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKEN_INDEX = -200


def sep_two_prompt(messages: list[dict[str, Any]], system: str) -> str:
    """``conv.get_prompt()`` of a ``SeparatorStyle.TWO`` conversation; a leading system message
    replaces ``system``. ``messages`` are OpenAI-style with ``text`` / ``image`` parts."""
    if messages and messages[0]["role"] == "system":
        system = "".join(p["text"] for p in messages[0]["content"] if p["type"] == "text")
        messages = messages[1:]
    seps = [" ", "</s>"]
    ret = system + seps[0]
    turns = [(m["role"], m["content"]) for m in messages] + [("assistant", None)]
    for i, (role, content) in enumerate(turns):
        name = "USER" if role == "user" else "ASSISTANT"
        if content:
            n_img = sum(1 for p in content if p["type"] == "image")
            text = "".join(p["text"] for p in content if p["type"] == "text")
            ret += name + ": " + "<image>\n" * n_img + text + seps[i % 2]
        else:
            ret += name + ":"
    return ret


def tokenizer_image_token(prompt: str, tokenizer: Any, image_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """``mm_utils.tokenizer_image_token``: chunks tokenized alone, ``image_index`` between them."""
    chunks = [tokenizer(c).input_ids for c in prompt.split("<image>")]
    ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(image_index)
        ids.extend(chunk[offset:])
    return ids
