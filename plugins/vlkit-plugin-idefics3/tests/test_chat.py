"""Prompt ids against ``Idefics3Processor``: the template, and each ``<image>`` expanded as the
processor expands it (tiles with ``<row_R_col_C>``, the global image, or the short form)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vlkit_plugin_idefics3.chat import Idefics3ChatTemplate, image_prompt
from vlkit_plugin_idefics3.vision import Idefics3VisionModel

from vlkit.config import ChatTemplateConfig
from vlkit.contract.messages import to_conversation
from vlkit.plugin import TemplateError
from vlkit.testing.images import make_image

WIDE = make_image(300, 120, seed=1)
TALL = make_image(120, 300, seed=2)
SQUARE = make_image(64, 64, seed=3)
STRIP = make_image(500, 90, seed=4)  # one row of tiles


def user(text: str, *imgs) -> dict:
    parts = [{"type": "image", "image": i} for i in imgs]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


CASES = {
    "wide": [user("What is in this image?", WIDE)],
    "tall": [user("What is in this image?", TALL)],
    "strip": [user("Read the text.", STRIP)],
    "two_images": [user("Compare the two pictures.", WIDE, TALL)],
    "multi_turn_system": [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        user("What is this?", SQUARE), assistant("A red bicycle."), user("And this one?", TALL),
    ],
    "text_only": [user("Tell me a story about a lighthouse.")],
}


def setup(path: Path, family=None, **cfg):
    from transformers import AutoTokenizer

    hf_config = json.loads((path / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(path)
    vm = Idefics3VisionModel(family, hf_config, path)
    vm.build_preprocessor()
    return Idefics3ChatTemplate(family, hf_config, path, tok, ChatTemplateConfig(**cfg)), vm


def encode(wrapper, vm, messages, options=None):
    conv = to_conversation([
        {"role": m["role"], "content": [{"type": "text", "text": p["text"]} if p["type"] == "text"
                                        else {"type": "image", "image": p["image"]} for p in m["content"]]}
        for m in messages
    ])
    imgs = [r.source for r in conv.images]
    items = vm.preprocess(imgs, [dict(options or {}) for _ in imgs]) if imgs else []
    return wrapper.encode(conv, [it.num_tokens for it in items], [it.meta for it in items]), items


def processor_ids(processor, messages, **images_kwargs) -> list[int]:
    """``Idefics3Processor(text=..., images=...)`` on the processor's own rendering of the chat."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    imgs = [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]
    kwargs = {"images": [imgs]} if imgs else {}
    # the template writes <|begin_of_text|> itself (apply_chat_template(tokenize=True) does the same)
    out = processor(text=[text], add_special_tokens=False, **kwargs, **images_kwargs)
    return list(out["input_ids"][0])


@pytest.mark.parametrize("name", ["split", "nosplit"])
@pytest.mark.parametrize("case", list(CASES))
def test_prompt_ids_equal_processor(ckpts, hf_models, name, case):
    wrapper, vm = setup(ckpts[name])
    _, processor = hf_models[name]
    enc, items = encode(wrapper, vm, CASES[case])
    assert enc.input_ids == processor_ids(processor, CASES[case]), enc.prompt
    image_id = processor.image_token_id
    positions = [i for i, t in enumerate(enc.input_ids) if t == image_id]
    assert sorted(i for spans in enc.image_spans for s, e in spans for i in range(s, e)) == positions
    for item, spans in zip(items, enc.image_spans):
        assert len(spans) == item.num_tiles  # one run of <image> per tile, text between them
        assert all(e - s == vm.image_seq_len for s, e in spans)
        assert sum(e - s for s, e in spans) == item.num_tokens


def test_grids_differ_by_aspect_ratio(ckpts):
    _, vm = setup(ckpts["split"])
    grids = [(it.meta["rows"], it.meta["cols"]) for it in vm.preprocess([WIDE, TALL, STRIP], [{}, {}, {}])]
    assert grids == [(2, 3), (3, 2), (1, 3)]


def test_per_image_option_turns_splitting_off(ckpts, hf_models):
    wrapper, vm = setup(ckpts["split"])
    _, processor = hf_models["split"]
    msgs = CASES["two_images"]
    enc, items = encode(wrapper, vm, msgs, {"do_image_splitting": False})
    assert [it.num_tiles for it in items] == [1, 1]
    assert enc.input_ids == processor_ids(processor, msgs, do_image_splitting=False)
    assert enc.input_ids != encode(wrapper, vm, msgs)[0].input_ids


def test_per_image_longest_edge(ckpts, hf_models):
    wrapper, vm = setup(ckpts["split"])
    _, processor = hf_models["split"]
    msgs = CASES["wide"]
    enc, items = encode(wrapper, vm, msgs, {"longest_edge": 96})
    assert (items[0].meta["rows"], items[0].meta["cols"]) == (1, 2)
    assert enc.input_ids == processor_ids(processor, msgs, size={"longest_edge": 96})


@pytest.mark.parametrize("bad", [{"do_image_splitting": "no"}, {"longest_edge": 0}, {"max_pixels": 5}])
def test_bad_options_are_refused(ckpts, bad):
    _, vm = setup(ckpts["split"])
    with pytest.raises(ValueError, match=next(iter(bad)) if "max_pixels" not in bad else "max_pixels"):
        vm.preprocess([WIDE], [bad])


def test_family_template_is_idefics3s(ckpts, hf_models):
    """Without the checkpoint's template, the family's idefics3.jinja renders the same prompt."""
    from vlkit.contract.registry import get_registry

    fam = get_registry().get_family("idefics3")
    wrapper, vm = setup(ckpts["split"], fam, model_name="idefics3")
    assert wrapper.template_name == "idefics3"
    _, processor = hf_models["split"]
    for msgs in CASES.values():
        assert encode(wrapper, vm, msgs)[0].input_ids == processor_ids(processor, msgs)


def test_image_prompt_forms():
    seq = "<image>" * 2
    assert image_prompt(0, 0, 2) == f"<fake_token_around_image><global-img>{seq}<fake_token_around_image>"
    assert image_prompt(1, 2, 2) == (
        f"<fake_token_around_image><row_1_col_1>{seq}<fake_token_around_image><row_1_col_2>{seq}\n"
        f"\n<fake_token_around_image><global-img>{seq}<fake_token_around_image>"
    )


def test_stop_words_include_end_of_utterance(ckpts):
    wrapper, _ = setup(ckpts["split"])
    eou = wrapper.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert eou in wrapper.stop_token_ids()
    assert wrapper.tokenizer.eos_token_id in wrapper.stop_token_ids()


def test_meta_mismatch_is_a_template_error(ckpts):
    wrapper, _ = setup(ckpts["split"])
    with pytest.raises(TemplateError, match="counted"):
        wrapper.image_text(0, 10, {"rows": 1, "cols": 2, "image_seq_len": 9})
    with pytest.raises(TemplateError, match="tile grid"):
        wrapper.image_text(0, 9, {})
