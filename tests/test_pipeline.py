"""The pipeline end to end on tiny checkpoints: inputs, caches, sessions, hub ids, text models, CLI."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import vlkit
from vlkit import GenerationConfig
from vlkit.testing.images import image_bytes, make_image

GEN = GenerationConfig(max_new_tokens=6)


@pytest.fixture(scope="module")
def pipe(llava_dir):
    p = vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=256),
                       vision_config=vlkit.VisionConfig(max_batch_size=3))
    yield p
    p.close()


def test_images_of_a_batch_are_encoded_together_and_cached(pipe):
    imgs = [make_image(40 + 9 * i, 50, seed=100 + i) for i in range(7)]
    pipe.image_encoder.clear()
    before = dict(pipe.image_encoder.stats)
    rs = pipe([(f"q{i}", img) for i, img in enumerate(imgs)], gen_config=GEN, use_tqdm=False)
    assert all(r.finish_reason == "length" for r in rs)
    calls = pipe.image_encoder.stats["forward_calls"] - before["forward_calls"]
    assert calls == 3  # 7 images in batches of VisionConfig.max_batch_size=3
    # the same pixels again (even as other bytes of the same image): served from the feature cache
    again = pipe(("q0", image_bytes(imgs[0], "PNG")), gen_config=GEN)
    assert pipe.image_encoder.stats["forward_calls"] - before["forward_calls"] == 3
    assert again.token_ids == rs[0].token_ids


def test_batched_equals_single(pipe):
    prompts = [("describe", make_image(60, 30, seed=1)), "plain text", ("two", [make_image(20, 20, seed=2)] * 2)]
    batch = pipe(prompts, gen_config=GEN, use_tqdm=False)
    for p, r in zip(prompts, batch):
        assert pipe(p, gen_config=GEN).token_ids == r.token_ids
    assert [r.index for r in batch] == [0, 1, 2]


def test_stream_infer_concatenates_to_the_blocking_result(pipe):
    prompts = [("a", make_image(30, 30, seed=3)), ("b", make_image(50, 20, seed=4))]
    want = pipe(prompts, gen_config=GEN, use_tqdm=False)
    got = {0: [], 1: []}
    reasons = {}
    for d in pipe.stream_infer(prompts, gen_config=GEN):
        got[d.index] += d.token_ids
        if d.finish_reason:
            reasons[d.index] = d.finish_reason
    assert got == {0: want[0].token_ids, 1: want[1].token_ids}
    assert reasons == {0: "length", 1: "length"}


def test_chat_second_turn_reuses_prefix_and_image_features(pipe):
    img = make_image(64, 48, seed=7)
    s = pipe.chat(("describe this image", img), gen_config=GEN)
    stats, enc = pipe.engine.stats(), dict(pipe.image_encoder.stats)
    s = pipe.chat("and what else?", session=s, gen_config=GEN)
    after = pipe.engine.stats()
    assert after["prefix_hit_tokens"] - stats["prefix_hit_tokens"] >= 16  # turn 1's full blocks reused
    assert pipe.image_encoder.stats["forward_calls"] == enc["forward_calls"]  # image not encoded again
    assert [m.role for m in s.history.messages] == ["user", "assistant", "user", "assistant"]
    # the session's answer equals a fresh run of the same conversation
    fresh = pipe(_conversation_without_last(s), gen_config=GEN)
    assert fresh.token_ids == s.response.token_ids


def _conversation_without_last(session):
    from vlkit.contract.messages import Conversation

    return Conversation(session.history.messages[:-1], session.history.images)


def test_prepare_inputs_and_get_logits(pipe):
    img = make_image(33, 44, seed=9)
    inputs = pipe.prepare_inputs(("what?", img))
    (start, end), = inputs["input_embedding_ranges"]
    assert end - start == inputs["input_embeddings"][0].shape[0]
    logits = pipe.get_logits(inputs)
    assert logits.shape == (len(inputs["input_ids"]), pipe.engine.vocab_size)
    r = pipe(("what?", img), gen_config=GenerationConfig(max_new_tokens=1))
    assert r.token_ids == [int(torch.argmax(logits[-1]))]


def test_progress_bar_only_for_batches(pipe, capsys):
    pipe("hello", gen_config=GEN)
    assert "req/s" not in capsys.readouterr().err
    pipe(["a", "b"], gen_config=GEN)
    assert "vlkit" in capsys.readouterr().err
    pipe(["a", "b"], gen_config=GEN, use_tqdm=False)
    assert "vlkit" not in capsys.readouterr().err


def test_bad_requests_fail_alone(pipe):
    from vlkit.api.media import ImageLoadError
    from vlkit.contract.messages import MessageError

    with pytest.raises(ImageLoadError, match="cannot decode"):
        pipe(("x", b"\x00\x01junk"))
    with pytest.raises(MessageError, match="2 image"):
        pipe(("one <IMAGE_TOKEN>", [make_image(9, 9), make_image(9, 9, seed=1)]))
    with pytest.raises(ValueError, match="session_len|longer"):
        pipe("word " * 5000)
    rs = pipe(["fine", ("bad", b"junk"), {"role": "user"}, "also fine"], gen_config=GEN, use_tqdm=False)
    assert [r.finish_reason for r in rs] == ["length", "error", "error", "length"]
    assert "cannot decode" in rs[1].error and "messages" in rs[2].error


def test_backend_config_alias_and_context_manager(llava_dir):
    with vlkit.pipeline(llava_dir, backend_config=vlkit.EngineConfig(num_blocks=64, session_len=300)) as p:
        assert p.engine.session_len == 300
        loop = p._loop
    assert p.engine is None and not loop._thread.is_alive()
    with pytest.raises(TypeError, match="not both"):
        vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(), backend_config=vlkit.EngineConfig())


def test_hub_id_from_offline_cache(llava_dir, tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache with HF_HUB_OFFLINE=1 (no network)."""
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-llava" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(llava_dir, snap)
    (cache / "models--acme--tiny-llava" / "refs").mkdir()
    (cache / "models--acme--tiny-llava" / "refs" / "main").write_text(snap.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    (cache / "models--acme--tiny-llava" / "refs" / "v1").write_text(snap.name)
    with vlkit.pipeline("acme/tiny-llava", engine_config=vlkit.EngineConfig(num_blocks=64)) as p:
        assert p.model_path == snap
        assert p("hi", gen_config=GEN).generate_token_len == 6
    with vlkit.pipeline("acme/tiny-llava", engine_config=vlkit.EngineConfig(num_blocks=64), revision="v1") as p:
        assert p.model_path == snap  # a tag resolves through the cache's refs
    with pytest.raises(FileNotFoundError, match="acme/missing is not in the local Hugging Face cache and "
                                                "HF_HUB_OFFLINE is set"):
        vlkit.pipeline("acme/missing")
    with pytest.raises(FileNotFoundError, match="at revision 'v9'"):
        vlkit.pipeline("acme/tiny-llava", revision="v9")


def test_text_checkpoint_without_template_encodes_like_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from vlkit.testing.text import write_tiny_llama

    path = write_tiny_llama(tmp_path / "llama")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = None
    prompt = "The quick brown fox"
    with vlkit.pipeline(path, engine_config=vlkit.EngineConfig(num_blocks=64)) as p:
        if p.chat_template is not None:
            pytest.skip("the tiny tokenizer carries a chat template")
        r = p(prompt, gen_config=GenerationConfig(max_new_tokens=8, ignore_eos=True))
    ids = tok(prompt, return_tensors="pt").input_ids
    hf = LlamaForCausalLM.from_pretrained(path).eval()
    out = hf.generate(ids, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert r.input_token_len == ids.shape[1]
    assert r.token_ids == out[0, ids.shape[1]:].tolist()
    with vlkit.pipeline(path) as p, pytest.raises(ValueError, match="text-only"):
        p(("x", make_image(9, 9)))


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vlkit.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env, **kw)


def test_cli_run_and_chat(llava_dir, tmp_path):
    img = tmp_path / "img.png"
    make_image(40, 30, seed=5).save(img)
    r = _cli("run", str(llava_dir), "describe", "--image", str(img), "--max-new-tokens", "5", "--num-blocks", "64")
    assert r.returncode == 0, r.stderr
    assert "5 generated, finish_reason=length" in r.stderr
    with vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=64)) as p:
        want = p(("describe", str(img)), gen_config=GenerationConfig(max_new_tokens=5))
    assert r.stdout.rstrip("\n") == want.text

    s = _cli("run", str(llava_dir), "describe", "--image", str(img), "--max-new-tokens", "5", "--stream",
             "--num-blocks", "64")
    assert s.returncode == 0 and s.stdout.rstrip("\n") == want.text

    bad = _cli("run", str(llava_dir), "x", "--image", str(tmp_path / "nope.png"), "--num-blocks", "64")
    assert bad.returncode == 2 and "not found" in bad.stderr

    chat = _cli("chat", str(llava_dir), "--max-new-tokens", "3", "--num-blocks", "64",
                input=f"/image {img}\ndescribe\nmore\n/reset\nhello\n/exit\n")
    assert chat.returncode == 0, chat.stderr
    assert "(image attached" in chat.stdout and "(new conversation)" in chat.stdout


@pytest.mark.slow
def test_demo_main_job(tmp_path):
    r = _cli("demo", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "RANDOM WEIGHTS" in r.stdout
    assert "finish_reason=length" in r.stdout and "demo.png" in r.stdout


def test_the_same_image_bytes_again_are_not_decoded_or_preprocessed(pipe):
    from vlkit.contract.messages import ImageRef

    png = image_bytes(make_image(70, 40, seed=77), "PNG")
    uri = "data:image/png;base64," + __import__("base64").b64encode(png).decode()
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "hi"}]}]
    first = pipe(msgs, gen_config=GEN)
    enc = pipe.image_encoder
    before = dict(enc.stats)
    again = pipe(msgs, gen_config=GEN)  # a chat client resending its history
    assert again.token_ids == first.token_ids
    assert enc.stats["preprocessed"] == before["preprocessed"]
    assert enc.stats["source_hits"] == before["source_hits"] + 1
    assert enc.stats["forward_calls"] == before["forward_calls"]
    # should the embeddings leave the cache between preprocessing and encoding, the item is
    # preprocessed then, from the bytes it carries, and encodes to the same embeddings
    (light,) = pipe._loop.call(enc.preprocess, [ImageRef(png)])
    assert light.source is not None and not light.data
    want = pipe._loop.call(enc.encode, [light])[0]
    pipe._loop.call(enc._cache.clear)
    got = pipe._loop.call(enc.encode, [light])[0]
    assert torch.equal(got, want)
    assert enc.stats["preprocessed"] == before["preprocessed"] + 1


def test_hub_download_fetches_only_checkpoint_files(tmp_path, monkeypatch):
    """Only configs, safetensors, tokenizer and template files are fetched; the .bin weights
    only for a repository without safetensors."""
    import huggingface_hub

    from vlkit.contract.registry import resolve_model_path

    calls = []

    def fake(repo, revision=None, allow_patterns=None):
        calls.append((repo, revision, tuple(allow_patterns)))
        d = tmp_path / repo.replace("/", "--")
        d.mkdir(exist_ok=True)
        if repo == "acme/safe":
            (d / "model.safetensors").write_bytes(b"")
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert resolve_model_path("acme/safe", revision="abc").name == "acme--safe"
    (repo, rev, patterns), = calls
    assert rev == "abc" and "*.safetensors" in patterns and "*.bin" not in patterns and "*.onnx" not in patterns
    resolve_model_path("acme/old")
    assert "*.bin" not in calls[1][2] and "*.bin" in calls[2][2]  # retried with the .bin weights
