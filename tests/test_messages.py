import pytest

from vlkit.contract.messages import (
    IMAGE_TOKEN,
    ImagePart,
    MessageError,
    TextPart,
    split_batch,
    to_conversation,
)


def test_tuple_without_marker_puts_images_first():
    conv = to_conversation(("describe", ["a.png", "b.png"]))
    parts = conv.messages[0].parts
    assert [type(p) for p in parts] == [ImagePart, ImagePart, TextPart]
    assert [p.index for p in parts[:2]] == [0, 1] and not parts[0].placed
    assert [r.source for r in conv.images] == ["a.png", "b.png"]


def test_image_token_places_images():
    conv = to_conversation((f"left {IMAGE_TOKEN} middle {IMAGE_TOKEN} right", ["a", "b"]))
    parts = conv.messages[0].parts
    assert [(type(p).__name__, getattr(p, "text", getattr(p, "index", None))) for p in parts] == [
        ("TextPart", "left "), ("ImagePart", 0), ("TextPart", " middle "), ("ImagePart", 1), ("TextPart", " right")
    ]
    assert all(p.placed for p in parts if isinstance(p, ImagePart))


def test_more_images_than_markers_is_an_error():
    with pytest.raises(MessageError, match=r"2 image\(s\) given but the text has 1"):
        to_conversation((f"{IMAGE_TOKEN} x", ["a", "b"]))
    with pytest.raises(MessageError, match="but no image"):
        to_conversation(f"{IMAGE_TOKEN} x")


def test_openai_messages_keep_order_and_extras():
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "first"},
            {"type": "image_url", "image_url": {"url": "http://x/a.png", "max_dynamic_patch": 4}},
            {"type": "text", "text": "second"},
        ]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
    ]
    conv = to_conversation(msgs)
    assert [m.role for m in conv.messages] == ["system", "user", "assistant", "user"]
    assert [type(p).__name__ for p in conv.messages[1].parts] == ["TextPart", "ImagePart", "TextPart"]
    assert conv.images[0].options == {"max_dynamic_patch": 4}
    assert conv.messages[3].parts[0].index == 1


@pytest.mark.parametrize(("msgs", "field"), [
    ([{"role": "user"}], r"messages\[0\].content: missing"),
    ([{"role": "bot", "content": "x"}], r"messages\[0\].role"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], r"messages\[0\].content\[0\].image_url.url"),
    ([{"role": "user", "content": [{"type": "audio"}]}], r"messages\[0\].content\[0\].type"),
    ([{"role": "user", "content": 5}], r"messages\[0\].content: must be"),
])
def test_malformed_messages_name_the_field(msgs, field):
    with pytest.raises(MessageError, match=field):
        to_conversation(msgs)


def test_batch_detection():
    one = [{"role": "user", "content": "hi"}]
    assert split_batch(one) == ([one], False)
    assert split_batch([one, one])[1] is True
    assert split_batch(["a", ("b", "x.png")]) == (["a", ("b", "x.png")], True)
    assert split_batch("a") == (["a"], False)


def test_extend_renumbers_images():
    a = to_conversation(("one", "a.png"))
    b = to_conversation(("two", "b.png"))
    c = a.extend(b)
    assert [p.index for m in c.messages for p in m.parts if isinstance(p, ImagePart)] == [0, 1]
    assert [r.source for r in c.images] == ["a.png", "b.png"]
