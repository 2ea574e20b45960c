"""MobileVLM's prompt: ``conv_vicuna_v1`` (``--conv-mode v1``) and ``tokenizer_image_token``.

The reference strings are the original ``Conversation.get_prompt()``'s, as
:func:`vlkit_plugin_mobilevlm.testing.vicuna_v1_prompt` re-derives them (checked once against
MobileVLM's ``conversation.py`` itself for one image, multi-turn and text-only prompts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vlkit_plugin_mobilevlm.chat import MobileVLMChatTemplate
from vlkit_plugin_mobilevlm.testing import (
    IMAGE_TOKEN_INDEX,
    VICUNA_V1_SYSTEM,
    tokenizer_image_token,
    vicuna_v1_prompt,
)

from vlkit.config import ChatTemplateConfig
from vlkit.messages import IMAGE_TOKEN, to_conversation
from vlkit.testing.images import make_image

IMG_A = make_image(300, 120, seed=1)
IMG_B = make_image(64, 64, seed=2)
N_TOKENS = 9


def user(text: str, *imgs) -> dict:
    return {"role": "user", "content": [*({"type": "image", "image": i} for i in imgs), {"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


CASES = {
    "one_image": [user("What is in this image?", IMG_A)],
    "two_images": [user("Compare the two pictures.", IMG_A, IMG_B)],
    "multi_turn": [user("What is this?", IMG_A), assistant("A red bicycle."), user("And this one?", IMG_B)],
    "system": [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]}, user("Hi", IMG_B)],
    "text_only": [user("Tell me a story.")],
}


@pytest.fixture(scope="module")
def wrapper(ckpts) -> MobileVLMChatTemplate:
    from transformers import AutoTokenizer

    path: Path = ckpts["v1"]
    tok = AutoTokenizer.from_pretrained(path)
    return MobileVLMChatTemplate(None, json.loads((path / "config.json").read_text()), path, tok, ChatTemplateConfig())


def encode(wrapper, prompt):
    conv = to_conversation(prompt)
    return wrapper.encode(conv, [N_TOKENS] * len(conv.images))


def test_system_prompt_is_mobilevlms():
    assert "curious user" in VICUNA_V1_SYSTEM and "the user's questions" in VICUNA_V1_SYSTEM


def test_one_image_prompt_string(wrapper):
    text = wrapper.render(to_conversation(CASES["one_image"]))
    assert text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is in this image? ASSISTANT:"
    )


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_equals_conv_vicuna_v1(wrapper, case):
    msgs = CASES[case]
    assert wrapper.render(to_conversation(msgs)) == vicuna_v1_prompt(msgs)


@pytest.mark.parametrize("case", list(CASES))
def test_ids_equal_tokenizer_image_token(wrapper, case):
    msgs = CASES[case]
    got = encode(wrapper, msgs)
    ref = tokenizer_image_token(vicuna_v1_prompt(msgs), wrapper.tokenizer)
    # the original's single -200 per image becomes N_TOKENS positions here
    expanded: list[int] = []
    for t in ref:
        expanded.extend([IMAGE_TOKEN_INDEX] * N_TOKENS if t == IMAGE_TOKEN_INDEX else [t])
    assert len(got.input_ids) == len(expanded)
    image_pos = [i for i, t in enumerate(expanded) if t == IMAGE_TOKEN_INDEX]
    assert [i for s, e in got.image_ranges for i in range(s, e)] == image_pos
    assert [t for i, t in enumerate(got.input_ids) if i not in set(image_pos)] == [t for t in expanded if t != IMAGE_TOKEN_INDEX]
    assert got.input_ids[0] == wrapper.tokenizer.bos_token_id
    assert got.input_ids.count(wrapper.tokenizer.bos_token_id) == 1  # chunks after an image lose their BOS


def test_image_token_placed_by_the_user(wrapper):
    got = encode(wrapper, (f"Look: {IMAGE_TOKEN} what is it?", IMG_A))
    assert len(got.image_ranges) == 1
    conv = to_conversation((f"Look: {IMAGE_TOKEN} what is it?", IMG_A))
    assert wrapper.render(conv).endswith("USER: Look: <image> what is it? ASSISTANT:")


def test_marker_count_mismatch_is_an_error(wrapper):
    from vlkit.chat import TemplateError

    with pytest.raises(TemplateError, match="image markers"):
        wrapper.encode(to_conversation(CASES["one_image"]), [N_TOKENS, N_TOKENS])


def test_stops_on_eos(wrapper):
    assert wrapper.tokenizer.eos_token_id in wrapper.stop_token_ids()


def test_image_positions_hold_unk(wrapper):
    got = encode(wrapper, CASES["one_image"])
    (s, e), = got.image_ranges
    assert e - s == N_TOKENS
    assert set(got.input_ids[s:e]) == {wrapper.tokenizer.unk_token_id}
