"""Direct tests of the Qwen2-VL / Qwen2.5-VL plugin against transformers on the same weights:
vision features, M-RoPE positions, per-image ``min_pixels`` / ``max_pixels``, text-only prompts,
bad options, an image too large for ``session_len``."""

from __future__ import annotations

import pytest
import torch

from vlkit.config import GenerationConfig
from vlkit.testing.conformance import make_test_image
from vlkit.testing.images import data_uri


def _msgs(text, images, reference, options=None):
    content = []
    for im in images:
        if reference:
            content.append({"type": "image", "image": im.convert("RGB")})
        elif options:
            content.append({"type": "image_url", "image_url": {"url": data_uri(im), **options}})
        else:
            content.append({"type": "image", "image": im})
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


GEN = GenerationConfig(max_new_tokens=8, min_new_tokens=8)


def test_vision_features_equal_transformers(qwen):
    _, _, pipe, ref = qwen
    imgs = [make_test_image("wide"), make_test_image("large", seed=1), make_test_image("tiny")]
    items = pipe.vision.preprocess(imgs, [{}, {}, {}])
    mine = pipe.vision.forward(items)  # one batched forward for three sizes
    inputs = ref.inputs(_msgs("x", imgs, True))
    assert [it.data["grid_thw"] for it in items] == [tuple(g) for g in inputs["image_grid_thw"].tolist()]
    with torch.inference_mode():
        theirs = ref.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    assert [m.shape for m in mine] == [t.shape for t in theirs]
    for m, t in zip(mine, theirs):
        torch.testing.assert_close(m, t, atol=1e-5, rtol=1e-5)
    # the features depend on the image: the test is not vacuous
    assert not torch.allclose(mine[0][:4], pipe.vision.forward(pipe.vision.preprocess([make_test_image("wide", seed=5)], [{}]))[0][:4])


def test_mrope_positions_equal_get_rope_index(qwen):
    _, _, pipe, ref = qwen
    imgs = [make_test_image("tall"), make_test_image("wide", seed=2)]
    msgs = _msgs("Compare them.", imgs, False)
    msgs += [{"role": "assistant", "content": [{"type": "text", "text": "Two pictures."}]},
             *_msgs("And this one?", [make_test_image("square")], False)]
    ref_msgs = [{**m, "content": [{"type": "image", "image": p["image"].convert("RGB")} if p["type"] == "image" else p
                                  for p in m["content"]]} for m in msgs]
    got = pipe.prepare_inputs(msgs)
    inputs = ref.inputs(ref_msgs)
    assert got["input_ids"] == inputs["input_ids"][0].tolist()
    pos, delta = ref.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                image_grid_thw=inputs["image_grid_thw"])
    assert torch.equal(got["mrope_positions"], pos[:, 0])
    assert got["mrope_position_delta"] == int(delta) < 0
    # 3-D positions differ from 1-D ones inside images (else M-RoPE would be untested)
    assert not torch.equal(got["mrope_positions"][1], got["mrope_positions"][2])


@pytest.mark.parametrize("options", [{"max_pixels": 28 * 28 * 8}, {"min_pixels": 28 * 28 * 40, "max_pixels": 28 * 28 * 48}])
def test_per_image_pixel_options(qwen, options):
    _, _, pipe, ref = qwen
    img = make_test_image("large", seed=4)
    default = pipe.prepare_inputs(_msgs("Describe.", [img], False))
    got = pipe.prepare_inputs(_msgs("Describe.", [img], False, options))
    (s, e), (s0, e0) = got["input_embedding_ranges"][0], default["input_embedding_ranges"][0]
    assert e - s != e0 - s0
    assert (e - s) * 28 * 28 <= options["max_pixels"]
    size = {"shortest_edge": options.get("min_pixels", 28 * 28 * 4), "longest_edge": options["max_pixels"]}
    theirs = ref(_msgs("Describe.", [img], True), 8, size=size)
    assert got["input_ids"] == theirs.prompt_ids
    r = pipe(_msgs("Describe.", [img], False, options), gen_config=GEN, use_tqdm=False)
    assert r.token_ids == theirs.generated
    # an option applies to its own image only
    two = pipe.prepare_inputs([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(img), **options}},
        {"type": "image", "image": img}, {"type": "text", "text": "Describe."}]}])
    (a, b), (c, d) = two["input_embedding_ranges"]
    assert (b - a, d - c) == (e - s, e0 - s0)


def test_text_only_prompt_equals_transformers(qwen):
    """Text-only prompts get plain 1-D positions; with t = h = w = position M-RoPE is 1-D RoPE."""
    _, _, pipe, ref = qwen
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Tell me about lighthouses."}]}]
    got = pipe.prepare_inputs(msgs)
    assert "mrope_positions" not in got
    theirs = ref(msgs, 8)
    assert got["input_ids"] == theirs.prompt_ids
    logits = pipe.get_logits(got)
    torch.testing.assert_close(logits, theirs.logits, atol=1e-4, rtol=1e-4)
    n = len(got["input_ids"])
    as_3d = pipe.get_logits({**got, "mrope_positions": torch.arange(n).expand(3, -1).clone()})
    torch.testing.assert_close(as_3d, logits)
    r = pipe(msgs, gen_config=GEN, use_tqdm=False)
    assert r.token_ids == theirs.generated


def test_stops_on_im_end(qwen):
    _, path, pipe, _ = qwen
    im_end = pipe.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in pipe.chat_template.stop_token_ids()


@pytest.mark.parametrize(("options", "match"), [
    ({"max_tiles": 3}, r"unknown Qwen2-VL image option.*max_tiles.*min_pixels"),
    ({"max_pixels": -5}, "max_pixels must be a positive integer"),
    ({"max_pixels": "big"}, "max_pixels must be a positive integer"),
    ({"min_pixels": 28 * 28 * 50, "max_pixels": 28 * 28 * 10}, "min_pixels .* > max_pixels"),
])
def test_bad_pixel_options(qwen, options, match):
    _, _, pipe, _ = qwen
    with pytest.raises(ValueError, match=match):
        pipe(_msgs("Describe.", [make_test_image("square")], False, options), gen_config=GEN, use_tqdm=False)


def test_image_over_session_len_says_lower_max_pixels(qwen):
    _, _, pipe, _ = qwen
    big = {"max_pixels": 28 * 28 * 2000, "min_pixels": 28 * 28 * 1100}  # ~1100+ tokens > session_len 1024
    with pytest.raises(ValueError) as info:
        pipe(_msgs("Describe.", [make_test_image("large")], False, big), gen_config=GEN, use_tqdm=False)
    msg = str(info.value)
    assert "session_len 1024" in msg and "max_pixels" in msg
    # the advice works: with the suggested max_pixels the request runs
    import re

    suggested = int(re.search(r"max_pixels[\"']?: ?(\d+)", msg).group(1))
    r = pipe(_msgs("Describe.", [make_test_image("large")], False, {"max_pixels": suggested}), gen_config=GEN,
             use_tqdm=False)
    assert r.finish_reason == "length"
