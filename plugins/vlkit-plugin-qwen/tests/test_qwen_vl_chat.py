"""Qwen-VL-Chat pieces on their own: the QWenLMHeadModel backbone vs transformers' Qwen2 on the
same weights, the tiktoken tokenizer's special ids, the vision side vs the reference derivation,
limits and bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.testing.conformance import make_test_image


@pytest.fixture(scope="module")
def qvl(tmp_path_factory):
    from qwenvl_reference import QwenVLReference
    from vlkit_plugin_qwen.checkpoints import tiny_qwen_vl_chat

    import vlkit

    path = tiny_qwen_vl_chat(tmp_path_factory.mktemp("qwen-vl") / "model", seed=4)
    pipe = vlkit.pipeline(path, engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=256))
    yield path, pipe, QwenVLReference(path)
    pipe.close()


def test_text_only_tokens_equal_qwen2(qvl):
    _, pipe, ref = qvl
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Tell me about lighthouses."}]}]
    theirs = ref(msgs, 12)
    got = pipe.prepare_inputs(msgs)
    assert got["input_ids"] == theirs.prompt_ids
    torch.testing.assert_close(pipe.get_logits(got), theirs.logits, atol=1e-4, rtol=1e-4)
    r = pipe(msgs, gen_config=GenerationConfig(max_new_tokens=12, min_new_tokens=12), use_tqdm=False)
    assert r.token_ids == theirs.generated


def test_tokenizer_special_ids(qvl):
    path, pipe, _ = qvl
    tok = pipe.tokenizer
    base = len(tok.mergeable_ranks)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [base, base + 1, base + 2]
    assert tok.convert_tokens_to_ids("<img>") == base + 3 + 205 + 6
    assert json.loads((path / "config.json").read_text())["visual"]["image_start_id"] == tok.convert_tokens_to_ids("<img>")
    ids = tok.encode("<|im_start|>user\nhello wörld<|im_end|>")
    assert ids[0] == base + 1 and ids[-1] == base + 2
    assert tok.decode(ids) == "<|im_start|>user\nhello wörld<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhello wörld"
    stops = pipe.chat_template.stop_token_ids()
    assert set(tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|im_start|>"])) <= set(stops)


def test_prompt_format(qvl):
    _, pipe, _ = qvl
    msgs = [{"role": "user", "content": [{"type": "image", "image": make_test_image("square")},
                                         {"type": "image", "image": make_test_image("wide")},
                                         {"type": "text", "text": "Compare."}]}]
    prompt = pipe.prepare_inputs(msgs)["prompt"]
    span = "<img>" + "<imgpad>" * 256 + "</img>"
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      f"Picture 1: {span}\nPicture 2: {span}\nCompare.<|im_end|>\n<|im_start|>assistant\n")


def test_vision_features_equal_reference(qvl):
    _, pipe, ref = qvl
    imgs = [make_test_image("tall"), make_test_image("large", seed=3)]
    feats = pipe.vision.forward(pipe.vision.preprocess(imgs, [{}, {}]))
    assert [tuple(f.shape) for f in feats] == [(256, 128)] * 2
    for f, im in zip(feats, imgs):
        torch.testing.assert_close(f, ref.visual(im), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(feats[0], feats[1])


def test_session_len_defaults_to_seq_length(qvl):
    _, pipe, _ = qvl
    assert pipe.engine.session_len == 2048


def test_image_options_refused(qvl):
    _, pipe, _ = qvl
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
        "max_pixels": 1000}}, {"type": "text", "text": "x"}]}]
    with pytest.raises(ValueError, match="no image options.*max_pixels"):
        pipe(msgs, use_tqdm=False)


def test_missing_lm_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    from vlkit_plugin_qwen.checkpoints import tiny_qwen_vl_chat

    import vlkit

    path = tiny_qwen_vl_chat(tmp_path / "m", seed=0)
    sd = load_file(str(path / "model.safetensors"))
    del sd["transformer.h.1.mlp.w2.weight"]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.w2\.weight"):
        vlkit.pipeline(path, engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=64))


def test_qwen_v1_text_checkpoint_without_visual_is_refused(tmp_path):
    from vlkit_plugin_qwen.checkpoints import tiny_qwen_vl_chat

    import vlkit

    path = tiny_qwen_vl_chat(tmp_path / "m", seed=0)
    cfg = json.loads((path / "config.json").read_text())
    del cfg["visual"]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no 'visual' section"):
        vlkit.pipeline(path, engine_config=EngineConfig(device="cpu", dtype="float32", num_blocks=64))
