"""Replicas on Ray Serve: a local Ray cluster, two replicas of a tiny LLaVA behind two replicas of
vlkit's router, all on loopback.

One module-scoped cluster for every test here (Ray and two replicas take ~20 s to come up on
2 cores), torn down at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from vlkit.testing.server import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def cluster(llava_dir):
    from vlkit.serve.ray import build_app

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(str(llava_dir), replicas=2, engine={"num_blocks": 128, "device": "cpu"},
                            server={"model_name": "tiny"},
                            pipeline={"chat_template": "llava-hf", "vision_max_batch_size": 4}, routers=2),
                  name="vlkit", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _client(url: str):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


def _ask(client, i: int, stream: bool, session: str | None = None, messages: list | None = None,
         **extra) -> tuple[str, str]:
    """One chat request, run to its end; (replica id, text). Raises unless it finished."""
    kw = {"extra_headers": {"serve_multiplexed_model_id": session}} if session else {}
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=messages or [{"role": "user", "content": f"request {i}"}], max_tokens=6, temperature=0,
        stream=stream, extra_body={"ignore_eos": True}, **kw, **extra)
    replica = raw.headers["x-vlkit-replica"]
    if stream:
        chunks = [c for c in raw.parse() if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = raw.parse().choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert finish == "length", f"request {i} ended with {finish!r}"
    return replica, text


def test_forty_requests_half_streaming_over_two_replicas(cluster):
    client = _client(cluster)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _ask(client, i, stream=i % 2 == 0), range(40)))
    assert len(results) == 40  # each one ran to max_tokens (_ask checks)
    served = {replica for replica, _ in results}
    assert len(served) == 2, f"one replica served everything: {served}"
    # the same greedy request gives the same text whichever replica serves it, streamed or not
    assert len({_ask(client, 7, stream=s)[1] for s in (False, True, False, True)}) == 1


def test_a_session_sticks_to_one_replica(cluster):
    client = _client(cluster)
    for session in ("alice", "bob", "carol"):
        _ask(client, 0, stream=False, session=session)  # the first turn places the session
        time.sleep(0.5)
        follow_ups = {_ask(client, turn, stream=turn % 2 == 0, session=session)[0] for turn in range(1, 6)}
        assert len(follow_ups) == 1, f"session {session} moved between replicas: {follow_ups}"


def test_a_conversation_user_or_image_keeps_its_turns_on_one_replica(cluster):
    """No header: the router keys on the OpenAI ``user`` field, else the first image, else the
    conversation's opening (which every later turn repeats), so each turn finds its cached prefix."""
    from vlkit.testing.images import data_uri, make_image

    client = _client(cluster)

    def turns(first: list, n: int = 4, **extra) -> set[str]:
        where, history = set(), list(first)
        for turn in range(n):
            where.add(_ask(client, turn, stream=turn % 2 == 0, messages=history, **extra)[0])
            history += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": f"and then {turn}?"}]
            time.sleep(0.3)  # the first turn places the key; Ray Serve learns where within a moment
        return where

    for who in ("dora", "erin", "fay"):
        where = turns([{"role": "system", "content": "be brief"}, {"role": "user", "content": f"I am {who}"}])
        assert len(where) == 1, f"{who}'s conversation moved between replicas: {where}"
    for seed in range(3):
        img = {"type": "image_url", "image_url": {"url": data_uri(make_image(40, 30, seed=seed))}}
        where = turns([{"role": "user", "content": [img, {"type": "text", "text": "what is it?"}]}])
        assert len(where) == 1, f"image {seed}'s turns moved between replicas: {where}"
    where = {_ask(client, t, stream=False, messages=[{"role": "user", "content": f"q{t}"}], user="hal")[0]
             for t in range(5)}  # a different opening each time, one user
    assert len(where) == 1, f"user hal moved between replicas: {where}"


def test_metrics_cover_every_replica(cluster):
    client = _client(cluster)
    for i in range(8):
        _ask(client, 100 + i, stream=False)
    deadline, seen = time.time() + 20, set()
    while time.time() < deadline and len(seen) < 2:
        time.sleep(1.0)  # replicas push every second
        text = httpx.get(f"{cluster}/metrics", timeout=10).text
        seen = set(re.findall(r'vlkit_requests_total\{replica="([^"]+)",endpoint="chat",status="200"\}', text))
    assert len(seen) == 2, text
    # one HELP line per metric, however many replicas report it
    assert text.count("# HELP vlkit_requests_total ") == 1
    assert re.search(r'vlkit_kv_cache_total_blocks\{replica="[^"]+"\} 128', text)


def test_a_killed_replica_fails_its_requests_and_is_replaced(cluster):
    # a long stream, killed halfway: it ends with an OpenAI-shaped error event
    body = {"model": "tiny", "messages": [{"role": "user", "content": "a long one"}], "max_tokens": 1500,
            "stream": True, "ignore_eos": True}
    events = []
    with httpx.stream("POST", f"{cluster}/v1/chat/completions", json=body, timeout=60) as r:
        victim, pid = r.headers["x-vlkit-replica"], int(r.headers["x-vlkit-replica-pid"])
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    os.kill(pid, signal.SIGKILL)
    assert events[-1] != "[DONE]"
    err = json.loads(events[-1])["error"]
    assert err["code"] == "replica_unavailable" and err["type"] == "server_error"
    client = _client(cluster)
    ok, seen, deadline = 0, set(), time.time() + 120
    while time.time() < deadline:
        try:
            replica, _ = _ask(client, ok, stream=False)
        except openai.APIError:  # a request caught on the dead replica fails, as an HTTP error
            ok = 0
            continue
        ok += 1
        seen.add(replica)
        if ok >= 5 and len(seen - {victim}) >= 2:  # the survivor and the replacement both serve
            break
        time.sleep(0.1)
    assert ok >= 5, "the surviving replica did not keep serving"
    assert victim not in seen, "requests still reached the killed replica"
    assert len(seen) >= 2, f"the killed replica was not replaced: only {seen} served"


def test_serve_run_builder_reads_key_value_args(llava_dir):
    from vlkit.serve.ray import app

    built = app({"model": str(llava_dir), "replicas": "3", "num_blocks": "64", "model_name": "m",
                 "chat_template": "llava-hf", "trust_remote_code": "false"})
    router = built._bound_deployment
    engines = router.init_args[0]._bound_deployment
    assert router.name == "vlkit-router" and router.num_replicas == 1
    assert engines.num_replicas == 3 and engines.name == "vlkit"
    assert engines.init_args[1] == {"num_blocks": 64} and engines.init_args[2]["model_name"] == "m"
    assert engines.init_args[4] == {"chat_template": "llava-hf", "trust_remote_code": False}
    # tp > 1: one bundle per rank, ranks as Ray actors
    tp = app({"model": str(llava_dir), "tp": "2", "num_cpus": "2", "placement_strategy": "SPREAD", "routers": "2"})
    assert tp._bound_deployment.num_replicas == 2
    engines = tp._bound_deployment.init_args[0]._bound_deployment
    assert engines._replica_config.placement_group_bundles == [{"CPU": 2}, {"CPU": 2}]
    assert engines._replica_config.placement_group_strategy == "SPREAD"
    assert engines.init_args[1] == {"tp": 2, "tp_backend": "ray"}
    with pytest.raises(ValueError, match="unknown arguments"):
        app({"model": "x", "no_such_option": "1"})
    with pytest.raises(ValueError, match="needs model="):
        app({"replicas": "2"})


def test_cli_without_ray_says_which_extra(tmp_path, llava_dir):
    """``vlkit serve --replicas 2`` where ray is missing: one line naming the extra."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray (test stub)')\n")
    r = subprocess.run([sys.executable, "-m", "vlkit.cli", "serve", str(llava_dir), "--replicas", "2"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "vlkit[ray]" in r.stderr and "Traceback" not in r.stderr


def test_errors_pass_through_the_router_unchanged(cluster):
    bad = httpx.post(f"{cluster}/v1/chat/completions", timeout=30,
                     json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    assert "x-vlkit-replica" in bad.headers  # answered by a replica, not made up by the router
    wrong = httpx.post(f"{cluster}/v1/chat/completions", content=b"{}", timeout=30,
                       headers={"content-type": "text/plain"})
    assert wrong.status_code == 415 and "x-vlkit-replica" not in wrong.headers  # the router's own guard
    models = httpx.get(f"{cluster}/v1/models", timeout=30).json()
    assert models["data"][0]["id"] == "tiny"
