"""The OpenAI-compatible server, started for real on 127.0.0.1 with a tiny LLaVA checkpoint."""

import asyncio
import base64
import io
import re
import threading
import time

import httpx
import pytest

import vlkit
from vlkit.testing.server import ThreadedServer

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

KEY = "sk-test-key"


def _png_uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_Server = ThreadedServer


@pytest.fixture(scope="module")
def pipe(llava_dir):
    p = vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=512, max_batch_size=64))
    yield p
    p.close()


@pytest.fixture(scope="module")
def server(pipe):
    s = _Server(pipe)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def images():
    from vlkit.testing import image_set

    imgs = image_set()
    return [imgs["square"], imgs["wide"], imgs["tall"]]


def _messages(text, img=None):
    content = [{"type": "text", "text": text}]
    if img is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": _png_uri(img)}})
    return [{"role": "user", "content": content}]


def _expected(pipe, messages, max_tokens=12):
    return pipe(messages, gen_config=vlkit.GenerationConfig(max_new_tokens=max_tokens), use_tqdm=False)


def _metric(url, name, headers=None):
    text = httpx.get(f"{url}/metrics", headers=headers).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1))


def test_openai_client_sync_matches_pipeline(server, pipe, images):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    msgs = _messages("describe the picture", images[0])
    want = _expected(pipe, msgs)
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    assert r.choices[0].message.content == want.text
    assert r.usage.completion_tokens == want.generate_token_len
    assert r.usage.prompt_tokens == want.input_token_len
    assert r.choices[0].finish_reason == want.finish_reason == "length"

    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == want.generate_token_len


def test_openai_client_async_and_logprobs(server, pipe, images):
    msgs = _messages("what is here?", images[1])
    want = _expected(pipe, msgs, 8)

    async def go():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none")
        r = await client.chat.completions.create(model="tiny", messages=msgs, max_completion_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=3)
        text = ""
        async for c in await client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0,
                                                            stream=True):
            text += c.choices[0].delta.content or ""
        return r, text

    r, streamed = asyncio.run(go())
    assert r.choices[0].message.content == want.text == streamed
    content = r.choices[0].logprobs.content
    assert len(content) == want.generate_token_len
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    # greedy: the chosen token is the most likely one
    assert all(abs(t.logprob - t.top_logprobs[0].logprob) < 1e-5 for t in content)


def test_completions_endpoint_and_models(server, pipe):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    want = pipe.engine.generate("the quick brown fox", vlkit.GenerationConfig(max_new_tokens=6))
    r = client.completions.create(model="tiny", prompt="the quick brown fox", max_tokens=6, temperature=0)
    assert r.choices[0].text == want.text
    assert r.usage.completion_tokens == 6


def test_load_200_requests_concurrency_32(server, pipe, images):
    prompts = [_messages(f"question {i % 4}", images[i % 3] if i % 2 else None) for i in range(8)]
    expected = [_expected(pipe, m, 6).text for m in prompts]

    async def go():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
        sem = asyncio.Semaphore(32)

        async def one(i):
            async with sem:
                r = await client.chat.completions.create(model="tiny", messages=prompts[i % 8], max_tokens=6, temperature=0)
                return i, r.choices[0].message.content

        return await asyncio.gather(*(one(i) for i in range(200)))

    results = asyncio.run(go())
    assert len(results) == 200
    assert all(text == expected[i % 8] for i, text in results)


def test_disconnects_free_kv_blocks(server, pipe, images):
    idle = _metric(server.url, "vlkit_kv_cache_free_blocks")
    body = {"model": "tiny", "messages": _messages("tell a long story", images[0]), "max_tokens": 400,
            "ignore_eos": True, "stream": True}

    def client_that_leaves():
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for n, _ in enumerate(r.iter_lines()):
                if n >= 6:
                    break  # leave mid-stream

    threads = [threading.Thread(target=client_that_leaves) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.time() + 30
    while time.time() < deadline:
        if _metric(server.url, "vlkit_kv_cache_free_blocks") == idle and _metric(server.url, "vlkit_requests_running") == 0:
            break
        time.sleep(0.1)
    assert _metric(server.url, "vlkit_kv_cache_free_blocks") == idle
    assert _metric(server.url, "vlkit_requests_running") == 0
    assert pipe.engine.stats()["num_running"] == 0


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({"messages": "hi"}, "messages", "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages", "image 0"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "role"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature", "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}, "max_tokens", "max_tokens"),
])
def test_malformed_request_gets_400_naming_the_problem(server, body, param, needle):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "tiny", **body}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and needle in err["message"]
    assert err["param"] == param


def test_bad_request_among_good_ones(server, pipe, images):
    good = _messages("fine", images[2])
    want = _expected(pipe, good, 5).text
    bad = {"model": "tiny", "max_tokens": 5,
           "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}

    async def go():
        async with httpx.AsyncClient(timeout=120) as c:
            reqs = [c.post(f"{server.url}/v1/chat/completions", json={"model": "tiny", "messages": good, "max_tokens": 5, "temperature": 0})
                    for _ in range(5)]
            reqs.insert(2, c.post(f"{server.url}/v1/chat/completions", json=bad))
            return await asyncio.gather(*reqs)

    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200, 200, 400, 200, 200, 200]
    assert all(r.json()["choices"][0]["message"]["content"] == want for i, r in enumerate(rs) if i != 2)


def test_unknown_model_is_404_and_bad_json_is_400(server):
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_api_keys_limits(pipe):
    s = _Server(pipe, api_keys=[KEY], max_body_bytes=4096, max_concurrent_requests=1)
    try:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for method, path, body in [("GET", "/v1/models", None), ("GET", "/metrics", None),
                                   ("POST", "/v1/chat/completions", chat), ("POST", "/v1/completions", {"prompt": "x"})]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = httpx.request(method, s.url + path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/health").status_code == 200
        ok = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(s.url + "/v1/models", headers=ok).status_code == 200
        assert httpx.post(s.url + "/v1/chat/completions", json=chat, headers=ok, timeout=60).status_code == 200
        big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 10000}]}
        r = httpx.post(s.url + "/v1/chat/completions", json=big, headers=ok)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        async def two():
            async with httpx.AsyncClient(timeout=120, headers=ok) as c:
                long = {"model": "tiny", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500,
                        "ignore_eos": True}
                first = asyncio.create_task(c.post(s.url + "/v1/chat/completions", json=long))
                # the second request goes in while the first is in flight (not after a guessed delay)
                while "vlkit_requests_running 1" not in (await c.get(s.url + "/metrics")).text:
                    assert not first.done(), "the long request ended before the server reported it running"
                    await asyncio.sleep(0.005)
                second = await c.post(s.url + "/v1/chat/completions", json=chat)
                return await first, second

        first, second = asyncio.run(two())
        assert first.status_code == 200
        assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
    finally:
        s.stop()


def test_metrics_exposition(server):
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("vlkit_requests_total", "vlkit_generation_tokens_total", "vlkit_queue_depth",
                 "vlkit_kv_cache_free_blocks", "vlkit_kv_cache_usage_ratio", "vlkit_kv_cache_peak_used_blocks"):
        assert f"# TYPE {name}" in text
    for name in ("vlkit_prefix_cache_hit_tokens_total", "vlkit_preemptions_total"):
        assert f"# TYPE {name} counter" in text  # Prometheus: a _total is a counter


def _stop_across_tokens(pipe, messages, max_tokens):
    """A stop string made of the last character of one streamed piece of text and the first of
    the next, whose first occurrence is at that boundary; and the text before it."""
    gen = vlkit.GenerationConfig(max_new_tokens=max_tokens)
    pieces = [d.text for d in pipe.stream_infer([messages], gen_config=gen) if d.text]
    full = "".join(pieces)
    for i in range(len(pieces) - 1):
        before = "".join(pieces[: i + 1])
        stop = before[-1] + pieces[i + 1][0]
        if not stop.isspace() and full.find(stop) == len(before) - 1:
            return stop, before[:-1]
    raise AssertionError(f"no usable boundary in {pieces}: pick another prompt")


def test_stop_string_across_tokens_is_cut_once_everywhere(server, pipe, images):
    """A stop string that spans two tokens ends the text right before it, once, in the
    pipeline's blocking and streaming calls and in the server's plain and streamed replies."""
    msgs = _messages("hello", images[0])
    stop, want = _stop_across_tokens(pipe, msgs, 24)
    gen = vlkit.GenerationConfig(max_new_tokens=24, stop_words=[stop])
    blocking = pipe(msgs, gen_config=gen)
    assert blocking.text == want and blocking.finish_reason == "stop"
    streamed = list(pipe.stream_infer([msgs], gen_config=gen))
    assert "".join(d.text for d in streamed) == want
    assert streamed[-1].finish_reason == "stop"

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24, temperature=0,
                                                 stop=[stop], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
