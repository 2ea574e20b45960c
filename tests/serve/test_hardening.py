"""vlkit serve against careless clients and failures: shaped 400s, auth, content types,
disconnects that abort, health that tells the truth, streams that end with an error event."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

import vlkit
from vlkit.testing.server import ThreadedServer, free_port

_Server = ThreadedServer


@pytest.fixture(scope="module")
def pipe(llava_dir):
    p = vlkit.pipeline(llava_dir, engine_config=vlkit.EngineConfig(num_blocks=256))
    yield p
    p.close()


@pytest.fixture(scope="module")
def server(pipe):
    s = _Server(pipe)
    yield s
    s.stop()


MSGS = [{"role": "user", "content": "hello"}]


def _post(server, body, **kw):
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body, allow_nan=True)
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(f"{server.url}/v1/chat/completions", content=raw, headers=headers, timeout=kw.pop("timeout", 60),
                      **kw)


def _metric(url, name, labels=""):
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(("extra", "param"), [
    ({"top_p": math.nan}, "top_p"),
    ({"min_p": math.inf}, "min_p"),
    ({"temperature": -math.inf}, "temperature"),
    ({"stream_options": "yes"}, "stream_options"),
    ({"stream": "false"}, "stream"),
    ({"seed": 2**70}, "seed"),
    ({"n": 2}, "n"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
])
def test_bad_fields_are_400s_naming_the_param(server, extra, param):
    before = _metric(server.url, "vlkit_requests_total", '{endpoint="chat",status="400"}')
    r = _post(server, {"model": "tiny", "messages": MSGS, "max_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert " at 0x" not in err["message"]
    assert _metric(server.url, "vlkit_requests_total", '{endpoint="chat",status="400"}') == before + 1


def test_deeply_nested_json_is_a_400(server):
    r = _post(server, "[" * 100_000 + "]" * 100_000)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    r = _post(server, '{"model": "tiny", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert r.status_code == 400


def test_zero_max_completion_tokens_gives_zero_tokens_and_developer_is_system(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_completion_tokens=0, max_tokens=9)
    assert r.usage.completion_tokens == 0 and r.choices[0].message.content == ""
    dev = client.chat.completions.create(model="tiny", max_tokens=3, temperature=0,
                                         messages=[{"role": "developer", "content": "be brief"}, *MSGS])
    system = client.chat.completions.create(model="tiny", max_tokens=3, temperature=0,
                                            messages=[{"role": "system", "content": "be brief"}, *MSGS])
    assert dev.usage.prompt_tokens == system.usage.prompt_tokens
    assert dev.choices[0].message.content == system.choices[0].message.content


def test_auth_content_type_and_size_are_refused_shaped_and_counted(pipe):
    s = _Server(pipe, api_keys=["k1", "secret-key"], max_body_bytes=2048)
    try:
        ok = {"Authorization": "Bearer secret-key"}
        body = {"model": "tiny", "messages": MSGS, "max_tokens": 1}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "secret-key"}):
            r = _post(s, body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(f"{s.url}/v1/chat/completions", content=json.dumps(body), timeout=30,
                       headers={**ok, "Content-Type": "text/plain"})  # a cross-origin "simple" POST
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = _post(s, {**body, "pad": "x" * 4096}, headers=ok)
        assert r.status_code == 413
        assert _post(s, body, headers=ok).status_code == 200
        assert httpx.get(f"{s.url}/health").status_code == 200  # health needs no key
        metrics = httpx.get(f"{s.url}/metrics", headers=ok).text
        for status in ("401", "413", "415", "200"):
            assert f'endpoint="chat",status="{status}"' in metrics, status
    finally:
        s.stop()


def test_api_keys_are_compared_in_constant_time(monkeypatch):
    import hmac

    from vlkit.serve import guard

    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(guard.hmac, "compare_digest", spy)
    assert guard.key_ok("b", ["a", "b", "c"]) and not guard.key_ok("x", ["a", "b"])
    assert len(seen) == 5  # every key compared, even after a match


def test_a_non_streaming_client_that_leaves_is_aborted(server, pipe):
    idle = pipe.engine.stats()["num_free_blocks"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "a long story"}], "max_tokens": 4000,
            "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        _post(server, body, timeout=1.0)  # the client gives up after a second
    left = time.monotonic()
    while time.monotonic() - left < 2.0:
        stats = pipe.engine.stats()
        if stats["num_running"] == 0 and stats["num_free_blocks"] == idle:
            break
        time.sleep(0.05)
    stats = pipe.engine.stats()
    assert stats["num_running"] == 0 and stats["num_free_blocks"] == idle, stats


class _FailingPipe:
    """A pipeline whose engine fails after the first increment of every stream."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.model_path, self.tokenizer, self.engine = pipe.model_path, pipe.tokenizer, pipe.engine
        self.broken: str | None = None

    def failure(self):
        return self.broken

    async def generate(self, prompt, gen, media_policy=None):
        agen = self._pipe.generate(prompt, gen, media_policy=media_policy)
        try:
            yield await agen.__anext__()
            self.broken = "WorkerDiedError: tensor-parallel worker 1 exited (code -9)"
            raise RuntimeError("generation failed: tensor-parallel worker 1 exited (code -9)")
        finally:
            await agen.aclose()


def test_engine_failure_mid_stream_sends_an_error_event_and_health_turns_503(pipe):
    fake = _FailingPipe(pipe)
    s = _Server(fake, engine_check_interval=0.05)
    try:
        assert httpx.get(f"{s.url}/health").json() == {"status": "ok"}
        body = {"model": "tiny", "messages": MSGS, "max_tokens": 20, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, timeout=60) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["type"] == "server_error" and "worker 1 exited" in err["message"]
        health = httpx.get(f"{s.url}/health")
        assert health.status_code == 503 and "worker 1 exited" in health.json()["error"]
        r = _post(s, {"model": "tiny", "messages": MSGS, "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
        deadline = time.time() + 5
        while s.app.state.engine_failed is None and time.time() < deadline:
            time.sleep(0.05)
        assert "worker 1 exited" in s.app.state.engine_failed  # the watcher saw it
    finally:
        s.stop()


def test_latency_histograms_and_request_schemas(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
    metrics = httpx.get(f"{server.url}/metrics").text
    for name in ("vlkit:e2e_request_latency_seconds", "vlkit:time_to_first_token_seconds",
                 "vlkit:time_per_output_token_seconds", "vlkit:request_queue_time_seconds"):
        count = [line for line in metrics.splitlines() if line.startswith(name + "_count")]
        assert count and float(count[0].split()[-1]) >= 1, name
    spec = httpx.get(f"{server.url}/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    schema = chat["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in schema["properties"] and "top_p" in schema["properties"]
    assert "ChatCompletion" in json.dumps(chat["responses"]["200"])


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


@pytest.mark.slow
def test_tp2_worker_killed_health_503_stream_error_and_exit(llava_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vlkit.cli", "serve", str(llava_dir), "--tp", "2", "--port",
                             str(port), "--num-blocks", "64", "--device", "cpu", "--dtype", "float32"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not come up"
            time.sleep(0.25)
        workers = _children(proc.pid)
        assert workers, "no tensor-parallel worker process"
        events: list[str] = []

        def stream():
            body = {"messages": MSGS, "max_tokens": 4000, "stream": True, "ignore_eos": True}
            try:
                with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            events.append(line[6:])
                            if len(events) == 3:
                                for pid in workers:
                                    try:
                                        os.kill(pid, signal.SIGKILL)
                                    except ProcessLookupError:
                                        pass
            except httpx.HTTPError:
                pass

        t = threading.Thread(target=stream)
        t.start()
        t.join(timeout=60)
        assert events and events[-1] == "[DONE]" and "error" in json.loads(events[-2]), events[-3:]
        try:
            assert httpx.get(f"{url}/health", timeout=2).status_code == 503
        except httpx.HTTPError:
            pass  # already exiting
        assert proc.wait(timeout=30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
