import json

import pytest

from vlkit.config import ChatTemplateConfig
from vlkit.contract.chat import ChatTemplateWrapper, TemplateError, core_template, render_template
from vlkit.contract.messages import IMAGE_TOKEN, to_conversation
from vlkit.contract.registry import ModelFamily


class _Tok:
    """Just enough tokenizer for template selection and rendering."""

    bos_token = "<s>"
    eos_token = "</s>"


def test_sandbox_blocks_attribute_escape():
    with pytest.raises(TemplateError):
        render_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])


def test_raise_exception_in_template_is_reported():
    with pytest.raises(TemplateError, match="no system"):
        render_template("{{ raise_exception('no system') }}", [])


def test_llava_v1_multi_turn():
    conv = to_conversation([
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a"}}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Color?"},
    ])
    out = render_template(core_template("llava-v1"), conv.to_template(), add_generation_prompt=True,
                          image_marker="<image>", eos_token="</s>")
    assert out == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nWhat? ASSISTANT: A cat.</s>"
        "USER: Color? ASSISTANT:"
    )


def test_chatml_with_user_placed_image():
    conv = to_conversation((f"see {IMAGE_TOKEN} now", "a.png"))
    out = render_template(core_template("chatml"), conv.to_template(), add_generation_prompt=True, image_marker="<I>")
    assert out == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nsee <I> now<|im_end|>\n<|im_start|>assistant\n"


def test_template_selection_order(tmp_path):
    fam_tpl = tmp_path / "fam.jinja"
    fam_tpl.write_text("FAMILY")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "CHECKPOINT"}))
    fam = ModelFamily("f", ("FArch",), chat_templates={"fam": str(fam_tpl)})

    def pick(cfg=None, cls=ChatTemplateWrapper):
        return cls(fam, {}, tmp_path, _Tok(), cfg).template_name

    assert pick() == "checkpoint"  # no family default: the checkpoint's own template
    assert pick(ChatTemplateConfig(model_name="fam")) == "fam"
    assert pick(ChatTemplateConfig(model_name="chatml")) == "chatml"  # a core template
    assert pick(ChatTemplateConfig(chat_template="{{ 'x' }}")) == "custom"

    class WithDefault(ChatTemplateWrapper):
        default_template = "llava-v1"

    assert pick(cls=WithDefault) == "llava-v1"
    with pytest.raises(TemplateError, match="unknown chat template 'nope'.*fam.*chatml"):
        pick(ChatTemplateConfig(model_name="nope"))


def _char_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": 3, "a": 4, "b": 5, "\n": 6, " ": 7}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


_PARTS_TEMPLATE = ("{% for m in messages %}{% for p in m.content %}{% if p.type == 'image' %}{{ image_marker }}"
                   "{% else %}{{ p.text }}{% endif %}{% endfor %}{% endfor %}")


def test_expand_and_locate_images():
    wrapper = ChatTemplateWrapper(None, {}, "/nonexistent", _char_tokenizer(),
                                  ChatTemplateConfig(chat_template=_PARTS_TEMPLATE))
    conv = to_conversation((f"a{IMAGE_TOKEN}b{IMAGE_TOKEN}", ["x", "y"]))
    enc = wrapper.encode(conv, [2, 3])
    assert enc.prompt == "a<image><image>b<image><image><image>"
    assert enc.image_ranges == [(1, 3), (4, 7)]
    assert enc.image_spans == [[(1, 3)], [(4, 7)]]
    assert [enc.input_ids[i] for i in range(1, 3)] == [3, 3]


class _TiledWrapper(ChatTemplateWrapper):
    """An image's tokens interleaved with text, as Idefics3 writes ``<row_1_col_1>`` between tiles:
    2 image tokens, ``b``, the rest."""

    def image_text(self, index, num_tokens, meta):
        return "<image>" * 2 + "b" + "<image>" * (num_tokens - 2)


def _tiled_encoding():
    wrapper = _TiledWrapper(None, {}, "/nonexistent", _char_tokenizer(),
                            ChatTemplateConfig(chat_template=_PARTS_TEMPLATE))
    return wrapper.encode(to_conversation((f"a{IMAGE_TOKEN}a{IMAGE_TOKEN}", ["x", "y"])), [5, 3])


def test_an_image_may_fill_several_spans():
    enc = _tiled_encoding()
    assert enc.prompt == "a<image><image>b<image><image><image>a<image><image>b<image>"
    assert enc.image_spans == [[(1, 3), (4, 7)], [(8, 10), (11, 12)]]
    with pytest.raises(TemplateError, match="image 0 fills 2 spans"):
        enc.image_ranges  # noqa: B018 - one span per image is what this property promises


def test_prepared_request_fills_each_span_with_its_rows_in_order():
    """The Preparer hands the engine one embedding entry per span: an image's rows split in
    order across its spans, each entry tagged with the image's content hash."""
    from types import SimpleNamespace

    import torch

    from vlkit.api.prepare import Preparer, RequestError

    enc = _tiled_encoding()
    wrapper = SimpleNamespace(encode=lambda conv, n, metas: enc)
    vision = SimpleNamespace(prompt_too_long=lambda ids, items, n: None, mrope_positions=lambda ids, items: None)
    prep = Preparer(None, wrapper, vision, object(), None, 1000, "/nonexistent")
    items = [SimpleNamespace(num_tokens=5, meta={}, hash="h0"), SimpleNamespace(num_tokens=3, meta={}, hash="h1")]
    embs = [torch.arange(5 * 4.0).view(5, 4), 100 + torch.arange(3 * 4.0).view(3, 4)]
    conv = to_conversation(("x", ["y", "z"]))
    req = prep.request(conv, items, embs)
    assert req.prompt_token_ids == enc.input_ids
    assert req.embedding_ranges == [(1, 3), (4, 7), (8, 10), (11, 12)]
    assert req.embedding_hashes == ["h0", "h0", "h1", "h1"]
    want = [embs[0][:2], embs[0][2:], embs[1][:2], embs[1][2:]]
    assert all(torch.equal(g, w) for g, w in zip(req.input_embeddings, want, strict=True))
    with pytest.raises(RequestError, match="spans hold 5 positions for 4 embeddings"):
        prep.request(conv, items, [embs[0][:4], embs[1]])


def test_tokenize_between_images_as_llava_tokenizer_image_token():
    # a vocabulary without an image token, as LLaVA's original checkpoints: "<image>" would be
    # split into characters if the prompt were tokenized whole
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "<": 5, "i": 6, "m": 7, "g": 8, "e": 9, ">": 10}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")

    class Original(ChatTemplateWrapper):
        tokenize_between_images = True

    template = ("{% for m in messages %}{% for p in m.content %}{% if p.type == 'image' %}{{ image_marker }}"
                "{% else %}{{ p.text }}{% endif %}{% endfor %}{% endfor %}")
    wrapper = Original(None, {}, "/nonexistent", tok, ChatTemplateConfig(chat_template=template))
    assert wrapper.image_token_id == 0  # no image token: the positions hold unk
    enc = wrapper.encode(to_conversation((f"a{IMAGE_TOKEN}ba{IMAGE_TOKEN}b", ["x", "y"])), [2, 3])
    # each piece tokenized on its own, BOS only at the start
    assert enc.input_ids == [1, 3, 0, 0, 4, 3, 0, 0, 0, 4]
    assert enc.image_ranges == [(2, 4), (6, 9)]
    with pytest.raises(TemplateError, match="2 image markers for 1 images"):
        wrapper.encode(to_conversation((f"a{IMAGE_TOKEN}b{IMAGE_TOKEN}", ["x", "y"])), [2])
    # without the flag, the same tokenizer has no image token to place embeddings at
    with pytest.raises(TemplateError, match="no token '<image>' for images"):
        _ = ChatTemplateWrapper(None, {}, "/nonexistent", tok, ChatTemplateConfig(chat_template=template)).image_token_id


def _bundled_templates():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return sorted([*root.glob("vlkit/templates/*.jinja"), *root.glob("plugins/*/vlkit_plugin_*/templates/*.jinja")])


@pytest.mark.parametrize("path", _bundled_templates(), ids=lambda p: p.name)
def test_templates_render_images_under_transformers_too(path):
    """Every bundled template works as a checkpoint's own chat_template: rendered by
    transformers' apply_chat_template (which passes no image_marker) it writes the family's
    placeholder once per image, as vlkit renders it with that marker."""
    import re

    from vlkit.testing import make_tokenizer

    source = path.read_text()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a"}, {"type": "image"},
                                             {"type": "text", "text": "b"}]}]
    tok = make_tokenizer([], vocab_size=300)
    theirs = tok.apply_chat_template(messages, chat_template=source, tokenize=False, add_generation_prompt=True)
    if "image_marker" not in source:  # taken from a checkpoint: writes its placeholder literally
        assert theirs.count("<") >= 2
        return
    m = re.search(r"set image_marker = image_marker \| default\('([^']+)'\)", source)
    assert m, f"{path.name} uses image_marker without a default: transformers would drop its images"
    assert theirs.count(m.group(1)) == 2, theirs
    ours = render_template(source, messages, add_generation_prompt=True, image_marker=m.group(1),
                           bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
    assert ours.count(m.group(1)) == 2
