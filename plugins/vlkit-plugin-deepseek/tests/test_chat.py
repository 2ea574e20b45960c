"""Prompts: the original layout's template against an independent reading of the original
``conversation.py``; the transformers layouts' wrapper against the HF processor."""

from __future__ import annotations

import json

import pytest
from vlkit_plugin_deepseek.testing import original_input_ids, original_prompt

from vlkit.config import ChatTemplateConfig
from vlkit.contract.messages import IMAGE_TOKEN, to_conversation
from vlkit.contract.registry import get_registry

IMG = object()


def wrapper(path, **cfg):
    from transformers import AutoTokenizer
    from vlkit_plugin_deepseek.chat import DeepseekHFChatTemplate, DeepseekOriginalChatTemplate

    hf_config = json.loads((path / "config.json").read_text())
    fam = get_registry().family_for_architectures(hf_config["architectures"])
    cls = DeepseekOriginalChatTemplate if fam.name == "deepseek-vl-original" else DeepseekHFChatTemplate
    return cls(fam, hf_config, path, AutoTokenizer.from_pretrained(str(path)), ChatTemplateConfig(**cfg))


def _ids(ref):
    ids = ref["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    return list(ids[0]) if ids and isinstance(ids[0], list) else list(ids)


def _img():
    from vlkit.testing.images import make_image

    return make_image(40, 30)


CASES = {
    "one image": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it. "}]}],
    "image in the middle": [{"role": "user", "content": [
        {"type": "text", "text": " Compare "}, {"type": "image"}, {"type": "text", "text": " with "},
        {"type": "image"}, {"type": "text", "text": "."}]}],
    "multi-turn": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A bicycle."}]},
        {"role": "user", "content": [{"type": "text", "text": "Which colour?"}]},
    ],
    "system": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ],
    "empty system": [
        {"role": "system", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ],
}


def _vlkit_messages(msgs):
    img = _img()
    return [{**m, "content": [{"type": "image", "image": img} if p["type"] == "image" else p for p in m["content"]]}
            for m in msgs]


@pytest.mark.parametrize("case", list(CASES))
def test_original_template_matches_conversation_py(ckpts, case):
    w = wrapper(ckpts["orig13"])
    assert w.template_name == "deepseek-vl"
    conv = to_conversation(_vlkit_messages(CASES[case]))
    n = [16] * conv.num_images
    enc = w.encode(conv, n)
    want = original_prompt(CASES[case], eos=w.tokenizer.eos_token)
    assert w.render(conv) == w.tokenizer.bos_token + want
    assert enc.input_ids == original_input_ids(want, w.tokenizer, 16)
    assert enc.input_ids[0] == w.tokenizer.bos_token_id


def test_original_template_known_text(ckpts):
    w = wrapper(ckpts["orig13"])
    conv = to_conversation((f"What is in {IMAGE_TOKEN}?", [_img()]))
    assert w.render(conv) == (
        "<｜begin▁of▁sentence｜>You are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks using natural "
        "language.\n\nUser: What is in <image_placeholder>?\n\nAssistant:"
    )
    conv = to_conversation(("Describe.", [_img(), _img()]))  # default placement: images first, no separator
    assert "User: <image_placeholder><image_placeholder>Describe.\n\nAssistant:" in w.render(conv)
    eos = w.tokenizer.eos_token_id
    assert eos in w.stop_token_ids()


@pytest.mark.parametrize("case", list(CASES)[:3])
@pytest.mark.parametrize("layout", ["hf", "hybrid"])
def test_hf_wrapper_matches_processor(ckpts, case, layout):
    from transformers import AutoProcessor

    path = ckpts[layout]
    w = wrapper(path)
    assert w.template_name == "checkpoint"
    proc = AutoProcessor.from_pretrained(str(path))
    msgs = _vlkit_messages(CASES[case])
    ref = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    conv = to_conversation(msgs)
    enc = w.encode(conv, [proc.num_image_tokens] * conv.num_images)
    assert enc.input_ids == _ids(ref)
    image_id = proc.tokenizer.convert_tokens_to_ids("<image_placeholder>")
    assert sum(e - s for s, e in enc.image_ranges) == enc.input_ids.count(image_id)


def test_image_token_in_the_middle_hf(ckpts):
    """``IMAGE_TOKEN`` placed by the user gives what a transformers user writes with image parts there."""
    from transformers import AutoProcessor

    path = ckpts["hybrid"]
    w = wrapper(path)
    proc = AutoProcessor.from_pretrained(str(path))
    img = _img()
    conv = to_conversation((f"Compare {IMAGE_TOKEN} with {IMAGE_TOKEN} please", [img, img]))
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "Compare "}, {"type": "image", "image": img}, {"type": "text", "text": " with "},
        {"type": "image", "image": img}, {"type": "text", "text": " please"}]}]
    ref = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    enc = w.encode(conv, [576, 576])
    assert enc.input_ids == _ids(ref)
    assert "User: Compare <image_placeholder>" in w.render(conv)
