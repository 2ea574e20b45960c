"""The original layout's prompts against the original conversation.py (transcribed in
internvl_reference.mpt_prompt) and the ``chat()`` image expansion."""

from __future__ import annotations

import pytest
from internvl_reference import NEW, OLD, mpt_prompt
from PIL import Image
from vlkit_plugin_internvl.chat import InternVLChatTemplate, InternVLHFChatTemplate
from vlkit_plugin_internvl.checkpoints import write_tokenizer
from vlkit_plugin_internvl.hooks import vlkit_register_families

from vlkit.config import ChatTemplateConfig
from vlkit.contract.messages import IMAGE_TOKEN, to_conversation

IMG = Image.new("RGB", (8, 8))
CTX = "<IMG_CONTEXT>"


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return {"internlm2": write_tokenizer(root / "bos", bos=True), "qwen2": write_tokenizer(root / "nobos", bos=False)}


def wrapper(tok, template, cls=InternVLChatTemplate, **cfg):
    fams = {f.name: f for f in vlkit_register_families()}
    fam = fams["internvl" if cls is InternVLChatTemplate else "internvl-hf"]
    hf_config = {"architectures": ["InternVLChatModel"], "template": template, **cfg}
    return cls(fam, hf_config, "/nonexistent", tok, ChatTemplateConfig())


def span(n):
    return "<img>" + CTX * n + "</img>"


@pytest.mark.parametrize("template,llm", [("internlm2-chat", "internlm2"), ("Hermes-2", "qwen2"), ("internvl2_5", "internlm2")])
def test_single_image_prompt_ids_equal_original_chat(toks, template, llm):
    tok = toks[llm]
    w = wrapper(tok, template)
    conv = to_conversation(("describe this image", IMG))
    enc = w.encode(conv, [12])
    query = mpt_prompt(template, [(0, "<image>\ndescribe this image"), (1, None)]).replace("<image>", span(12), 1)
    assert enc.prompt == query
    assert enc.input_ids == tok(query).input_ids
    start = enc.input_ids.index(tok.convert_tokens_to_ids(CTX))
    assert enc.image_ranges == [(start, start + 12)]
    assert (enc.input_ids[0] == tok.bos_token_id) == (llm == "internlm2")


def test_separators(toks):
    conv = to_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                            {"role": "user", "content": "again"}])
    text = wrapper(toks["qwen2"], "Hermes-2").render(conv)
    assert text == (f"<|im_start|>system\n{OLD}<|im_end|><|im_start|>user\nhi<|im_end|><|im_start|>assistant\nyo"
                    "<|im_end|><|im_start|>user\nagain<|im_end|><|im_start|>assistant\n")
    text = wrapper(toks["qwen2"], "internvl2_5").render(conv)
    assert text == (f"<|im_start|>system\n{NEW}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo"
                    "<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")
    assert wrapper(toks["qwen2"], "phi3-chat").render(conv) == mpt_prompt(
        "phi3-chat", [(0, "hi"), (1, "yo"), (0, "again"), (1, None)])


def test_multi_turn_with_images_equals_original_history(toks):
    tok = toks["internlm2"]
    w = wrapper(tok, "internlm2-chat")
    conv = to_conversation([
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                     {"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "and its colour?"},
    ])
    enc = w.encode(conv, [8])
    query = mpt_prompt("internlm2-chat", [(0, "<image>\nwhat is it?"), (1, "a cat"), (0, "and its colour?"), (1, None)])
    assert enc.input_ids == tok(query.replace("<image>", span(8))).input_ids


def test_images_after_text_still_go_first(toks):
    w = wrapper(toks["qwen2"], "Hermes-2")
    conv = to_conversation([{"role": "user", "content": [{"type": "text", "text": "what?"},
                                                         {"type": "image_url", "image_url": {"url": "a.png"}}]}])
    assert "<|im_start|>user\n<image>\nwhat?<|im_end|>" in w.render(conv)


def test_separate_images_with_image_token(toks):
    w = wrapper(toks["qwen2"], "Hermes-2")
    conv = to_conversation((f"Image-1: {IMAGE_TOKEN}\nImage-2: {IMAGE_TOKEN}\nDescribe the two images.", [IMG, IMG]))
    enc = w.encode(conv, [4, 8])
    assert f"<|im_start|>user\nImage-1: {span(4)}\nImage-2: {span(8)}\nDescribe the two images.<|im_end|>" in enc.prompt
    (a0, a1), (b0, b1) = enc.image_ranges
    assert (a1 - a0, b1 - b0) == (4, 8) and b0 > a1


def test_adjacent_images_share_one_span(toks):
    """lmdeploy's "concatenated images" ({IMAGE_TOKEN}{IMAGE_TOKEN}\\n) and unplaced images:
    one <img>...</img> holding both, as the original's combined-images chat()."""
    w = wrapper(toks["qwen2"], "Hermes-2")
    placed = w.encode(to_conversation((f"{IMAGE_TOKEN}{IMAGE_TOKEN}\nDescribe.", [IMG, IMG])), [4, 8])
    unplaced = w.encode(to_conversation(("Describe.", [IMG, IMG])), [4, 8])
    expected = f"<|im_start|>user\n<img>{CTX * 12}</img>\nDescribe.<|im_end|>"
    assert expected in placed.prompt and expected in unplaced.prompt
    assert placed.input_ids == unplaced.input_ids
    (a0, a1), (b0, b1) = placed.image_ranges
    assert a1 == b0 and (a1 - a0, b1 - b0) == (4, 8)


def test_video_frames(toks):
    """A video item (meta kind "video") is written as the original video chat's frame lines."""
    w = wrapper(toks["qwen2"], "internvl2_5")
    conv = to_conversation([{"role": "user", "content": [{"type": "video", "video": [IMG] * 3},
                                                         {"type": "text", "text": "What happens?"}]}])
    assert [r.kind for r in conv.images] == ["video"]
    enc = w.encode(conv, [12], [{"kind": "video", "frame_tokens": [4, 4, 4]}])
    assert f"Frame1: {span(4)}\nFrame2: {span(4)}\nFrame3: {span(4)}\nWhat happens?<|im_end|>\n" in enc.prompt
    assert len(enc.image_spans[0]) == 3 and sum(e - s for s, e in enc.image_spans[0]) == 12


def test_system_prompts(toks):
    tok = toks["qwen2"]
    conv = to_conversation("hi")
    assert "<|im_start|>system\nbe brief<|im_end|>" in wrapper(tok, "Hermes-2", system_message="be brief").render(conv)
    fams = {f.name: f for f in vlkit_register_families()}
    w = InternVLChatTemplate(fams["internvl"], {"template": "Hermes-2"}, "/x", tok, ChatTemplateConfig(system="terse"))
    assert w.render(conv).startswith("<|im_start|>system\nterse<|im_end|><|im_start|>user\nhi")


def test_template_from_config_and_fallback(toks):
    tok = toks["qwen2"]
    assert wrapper(tok, "internlm2-chat").template_name == "internlm2-chat"
    assert wrapper(tok, "Hermes-2").template_name == "Hermes-2"
    assert wrapper(tok, "something-else").template_name == "internvl2_5"
    fams = {f.name: f for f in vlkit_register_families()}
    w = InternVLChatTemplate(fams["internvl"], {"template": "Hermes-2"}, "/x", tok, ChatTemplateConfig(model_name="internvl2_5"))
    assert w.template_name == "internvl2_5"


def test_stop_tokens(toks):
    for llm in ("qwen2", "internlm2"):
        tok = toks[llm]
        ids = wrapper(tok, "internlm2-chat").stop_token_ids()
        assert tok.convert_tokens_to_ids("<|im_end|>") in ids
        assert tok.eos_token_id in ids
    assert toks["qwen2"].convert_tokens_to_ids("<|end|>") in wrapper(toks["qwen2"], "phi3-chat").stop_token_ids()


def test_hf_wrapper_places_images_inline(toks):
    w = wrapper(toks["qwen2"], None, cls=InternVLHFChatTemplate)
    assert w.template_name == "internvl-hf"  # no checkpoint template at /nonexistent
    conv = to_conversation((f"Image-1: {IMAGE_TOKEN}\nImage-2: {IMAGE_TOKEN}\nSame?", [IMG, IMG]))
    enc = w.encode(conv, [4, 4])
    assert f"<|im_start|>user\nImage-1: {span(4)}\nImage-2: {span(4)}\nSame?<|im_end|>\n" in enc.prompt
    unplaced = w.encode(to_conversation(("Same?", [IMG, IMG])), [4, 4])
    assert f"<|im_start|>user\n{span(4)}\n{span(4)}\nSame?<|im_end|>\n" in unplaced.prompt
