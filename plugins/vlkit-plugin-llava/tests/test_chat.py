"""Prompt ids: llava-hf layouts against the checkpoint's own processor; the original layout
against LLaVA's conv_llava_v1 + tokenizer_image_token."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from vlkit_plugin_llava.chat import LlavaHFChatTemplate, LlavaOriginalChatTemplate
from vlkit_plugin_llava.testing import LLAVA_V1_SYSTEM, llava_v1_prompt, tokenizer_image_token
from vlkit_plugin_llava.vision import LlavaVisionModel

from vlkit.config import ChatTemplateConfig
from vlkit.contract.messages import IMAGE_TOKEN, to_conversation
from vlkit.testing.images import make_image

IMG_A = make_image(300, 120, seed=1)
IMG_B = make_image(64, 64, seed=2)


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


def setup(path: Path, cls=LlavaHFChatTemplate, **cfg):
    from transformers import AutoTokenizer

    hf_config = json.loads((path / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(path)
    vm = LlavaVisionModel(None, hf_config, path)
    vm.build_preprocessor()
    return cls(None, hf_config, path, tok, ChatTemplateConfig(**cfg)), vm, tok


def encode(wrapper, vm, prompt):
    conv = to_conversation(prompt)
    imgs = [r.source for r in conv.images]
    items = vm.preprocess(imgs, [{} for _ in imgs]) if imgs else []
    return wrapper.encode(conv, [it.num_tokens for it in items], [it.meta for it in items])


@pytest.mark.parametrize("name", ["llava", "next"])
@pytest.mark.parametrize("case", list(CASES))
def test_prompt_ids_equal_processor(ckpts, name, case):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(ckpts[name])
    wrapper, vm, _ = setup(ckpts[name])
    assert wrapper.template_name == "checkpoint"
    msgs = CASES[case]
    ref = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    ref = ref[0] if isinstance(ref[0], list) else ref
    enc = encode(wrapper, vm, msgs)
    assert enc.input_ids == list(ref)
    image_id = proc.image_token_id
    positions = [i for i, t in enumerate(ref) if t == image_id]
    assert [i for s, e in enc.image_ranges for i in range(s, e)] == positions


@pytest.mark.parametrize("name", ["llava", "next"])
def test_image_token_in_the_middle(ckpts, name):
    """IMAGE_TOKEN placed by the user stays there, as `<image>` written in the text does for
    a transformers user (llava-hf templates put image *parts* first)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(ckpts[name])
    wrapper, vm, _ = setup(ckpts[name])
    enc = encode(wrapper, vm, (f"What is {IMAGE_TOKEN} and {IMAGE_TOKEN}?", [IMG_A, IMG_B]))
    text = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "What is <image> and <image>?"}]}],
        add_generation_prompt=True,
    )
    assert enc.input_ids == list(proc(text=text, images=[IMG_A, IMG_B])["input_ids"][0])
    assert "What is <image><image>" in enc.prompt and "? ASSISTANT:" in enc.prompt


def test_template_falls_back_to_the_familys(ckpts, tmp_path):
    """A llava-hf checkpoint without a chat template gets the plugin's llava-hf template,
    which is the one the tiny checkpoint was saved with."""
    from vlkit.contract.registry import get_registry

    fam = get_registry().get_family("llava")
    bare = tmp_path / "bare"
    shutil.copytree(ckpts["llava"], bare)
    (bare / "chat_template.jinja").unlink()
    (bare / "chat_template.json").unlink(missing_ok=True)
    from transformers import AutoTokenizer

    cfg = json.loads((bare / "config.json").read_text())
    wrapper = LlavaHFChatTemplate(fam, cfg, bare, AutoTokenizer.from_pretrained(bare))
    assert wrapper.template_name == "llava-hf"
    with_own, vm, _ = setup(ckpts["llava"])
    assert encode(wrapper, vm, CASES["multi_turn"]).input_ids == encode(with_own, vm, CASES["multi_turn"]).input_ids


def test_llava_v1_can_be_chosen_for_hf_checkpoints(ckpts):
    wrapper, vm, _ = setup(ckpts["llava"], model_name="llava-v1")
    enc = encode(wrapper, vm, [user("What is this?", IMG_B)])
    assert enc.prompt.startswith(LLAVA_V1_SYSTEM + " USER: <image><image>")
    assert enc.prompt.endswith("\nWhat is this? ASSISTANT:")


@pytest.mark.parametrize("case", list(CASES))
def test_original_prompt_is_llava_v1(ckpts, case):
    wrapper, vm, tok = setup(ckpts["orig15"], LlavaOriginalChatTemplate)
    assert wrapper.template_name == "llava-v1"
    msgs = CASES[case]
    enc = encode(wrapper, vm, msgs)
    text = llava_v1_prompt(msgs)
    assert wrapper.render(to_conversation(msgs)) == text
    ids = tokenizer_image_token(text, tok)
    n = vm.preprocess([IMG_B], [{}])[0].num_tokens
    expanded = [t for x in ids for t in ([wrapper.image_token_id] * n if x == -200 else [x])]
    assert enc.input_ids == expanded
    image_positions = [i for i, t in enumerate(expanded) if t == wrapper.image_token_id]
    assert [i for s, e in enc.image_ranges for i in range(s, e)] == image_positions
    assert len(image_positions) == n * text.count("<image>")


def test_original_prompt_text(ckpts):
    wrapper, vm, tok = setup(ckpts["orig15"], LlavaOriginalChatTemplate)
    enc = encode(wrapper, vm, [user("What is this?", IMG_A), assistant("A bicycle."), user("Why?")])
    n = vm.preprocess([IMG_A], [{}])[0].num_tokens
    assert enc.prompt == (
        LLAVA_V1_SYSTEM + " USER: " + "<image>" * n + "\nWhat is this? ASSISTANT: A bicycle.</s>USER: Why? ASSISTANT:"
    )
    assert tok.convert_tokens_to_ids("<image>") in (None, tok.unk_token_id)  # the original vocabulary has none
    assert wrapper.image_token_id == tok.unk_token_id


def test_original_template_overrides(ckpts):
    wrapper, vm, _ = setup(ckpts["orig15"], LlavaOriginalChatTemplate, model_name="vicuna-v1")
    assert "curious user" in wrapper.render(to_conversation("hi"))
    wrapper, vm, _ = setup(ckpts["orig15"], LlavaOriginalChatTemplate, system="You are terse.")
    assert wrapper.render(to_conversation("hi")) == "You are terse. USER: hi ASSISTANT:"
