"""The server and images from strangers: refused sources, and no request stalling the others.

Through the official ``openai`` client: by default a server reads no local file and fetches no
private address (checked before connecting, and again at a redirect); a request whose image
drips in a byte a second, or is an 8000x8000 PNG, does not pause a neighbour's stream.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import openai
import pytest

import vlkit
from vlkit.api.fetch import MediaPolicy
from vlkit.testing.server import ThreadedServer

_Server = ThreadedServer


@pytest.fixture(scope="module")
def pipe(llava_dir):
    p = vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=256, max_batch_size=16))
    yield p
    p.close()


def _image_message(url: str, text: str = "describe") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                          {"type": "text", "text": text}]}]


def _status_of(fn) -> tuple[int, str]:
    try:
        fn()
    except openai.APIStatusError as exc:
        return exc.status_code, str(exc)
    return 200, ""


def test_default_server_refuses_local_files_and_private_urls(pipe, media_server):
    server = _Server(pipe)
    try:
        media_server.redirect_to = f"http://127.0.0.1:{media_server.port}/img.png"
        for url in ("file:///etc/hostname", "/etc/hostname", f"{media_server.url}/img.png",
                    "http://169.254.169.254/latest/meta-data/", f"http://localhost:{media_server.port}/redirect"):
            t0 = time.monotonic()
            status, message = _status_of(lambda url=url: server.client.chat.completions.create(
                model="tiny", messages=_image_message(url), max_tokens=2))
            assert status == 400, (url, status, message)
            assert time.monotonic() - t0 < 2.0, url
        assert media_server.seen == []  # nothing was fetched, not even the first hop of the redirect
    finally:
        server.stop()


def test_a_listed_host_may_not_redirect_to_loopback(pipe, media_server):
    server = _Server(pipe, media_policy=MediaPolicy.server(allowed_media_domains=["localhost"]))
    try:
        ok = server.client.chat.completions.create(
            model="tiny", messages=_image_message(f"http://localhost:{media_server.port}/img.png"), max_tokens=2)
        assert ok.choices[0].finish_reason == "length"
        media_server.redirect_to = f"http://127.0.0.1:{media_server.port}/img.png"
        status, message = _status_of(lambda: server.client.chat.completions.create(
            model="tiny", messages=_image_message(f"http://localhost:{media_server.port}/redirect"), max_tokens=2))
        assert status == 400 and "allowed media domains" in message
        assert media_server.seen == ["/img.png", "/redirect"]
    finally:
        server.stop()


def _big_png_uri(side: int = 8000) -> str:
    from PIL import Image

    img = Image.new("RGB", (side, side), (30, 90, 160))
    for x in range(0, side, 97):  # some structure, so decoding is real work
        img.paste((200, 40, 10), (x, 0, x + 7, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _gaps_while(server: _Server, work) -> tuple[float, float]:
    """Largest gap between a neighbour's streamed chunks without and with ``work`` running."""

    def stream() -> list[float]:
        times = []
        chunks = server.client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=200, temperature=0,
            stream=True, extra_body={"ignore_eos": True})
        for _ in chunks:
            times.append(time.monotonic())
        return times

    def largest(times: list[float]) -> float:
        return max(b - a for a, b in zip(times[5:], times[6:]))  # after the first few (prefill)

    quiet = largest(stream())
    got: dict[str, list[float]] = {}
    t = threading.Thread(target=lambda: got.setdefault("times", stream()))
    t.start()
    time.sleep(0.3)  # the neighbour is streaming
    work()
    t.join()
    return quiet, largest(got["times"])


def test_a_dripping_url_and_a_huge_png_do_not_stall_a_neighbour(pipe, media_server):
    policy = MediaPolicy.server(allow_private_urls=True, fetch_timeout=3.0, max_total_pixels=None)
    server = _Server(pipe, media_policy=policy)
    try:
        def drip():
            status, message = _status_of(lambda: server.client.chat.completions.create(
                model="tiny", messages=_image_message(f"{media_server.url}/drip"), max_tokens=2))
            assert status == 400 and "no image came back in time" in message

        quiet, busy = _gaps_while(server, drip)
        assert busy < quiet + 1.0, (quiet, busy)

        uri = _big_png_uri()

        def huge():
            r = server.client.chat.completions.create(model="tiny", messages=_image_message(uri), max_tokens=2)
            assert r.choices[0].finish_reason == "length"

        quiet, busy = _gaps_while(server, huge)
        assert busy < quiet + 1.0, (quiet, busy)
    finally:
        server.stop()


def test_200_requests_at_concurrency_64_half_streaming_with_images(pipe):
    """Nothing lost under load with images off the engine thread: every request, streamed or
    not, gets the text it gets alone, and the KV cache is back to idle after."""
    import asyncio

    from vlkit.testing import data_uri, make_image

    server = _Server(pipe)
    try:
        uris = [data_uri(make_image(40 + 13 * k, 50 + 7 * k, seed=k)) for k in range(4)]
        cases = [_image_message(uris[k % 4], f"question {k}") if k % 3 else
                 [{"role": "user", "content": f"text {k}"}] for k in range(8)]
        gen = vlkit.GenerationConfig(max_new_tokens=6)
        expected = [r.text for r in pipe(cases, gen_config=gen, use_tqdm=False)]
        idle = pipe.engine.stats()["num_free_blocks"]

        async def go():
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none",
                                        max_retries=0, timeout=300)
            sem = asyncio.Semaphore(64)

            async def one(i):
                async with sem:
                    msgs = cases[i % 8]
                    if i % 2:
                        chunks = await client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6,
                                                                      temperature=0, stream=True)
                        return i, "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
                    r = await client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
                    return i, r.choices[0].message.content

            return await asyncio.gather(*(one(i) for i in range(200)))

        results = asyncio.run(go())
        assert len(results) == 200
        assert [text for _, text in results] == [expected[i % 8] for i, _ in results]
        deadline = time.time() + 5
        while pipe.engine.stats()["num_free_blocks"] != idle and time.time() < deadline:
            time.sleep(0.05)
        assert pipe.engine.stats()["num_free_blocks"] == idle
    finally:
        server.stop()
