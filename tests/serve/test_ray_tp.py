"""A Ray Serve replica with tensor parallelism: rank 1 is a Ray actor in the replica's placement group.

Its own local Ray cluster (one replica, ``tp=2`` on the CPU, gloo), torn down at the end.
"""

from __future__ import annotations

import time

import httpx
import pytest

from vlkit.testing.server import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

QUESTION = [{"role": "user", "content": "describe the weather in one line"}]


@pytest.fixture(scope="module")
def reference(llava_dir):
    import vlkit

    gen = vlkit.GenerationConfig(max_new_tokens=12, ignore_eos=True)
    with vlkit.pipeline(str(llava_dir), engine_config=vlkit.EngineConfig(num_blocks=64, device="cpu")) as pipe:
        return pipe(QUESTION, gen_config=gen).text


@pytest.fixture(scope="module")
def tp_cluster(llava_dir, reference):
    from vlkit.serve.ray import build_app

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(str(llava_dir), replicas=1, engine={"tp": 2, "num_blocks": 64, "device": "cpu"},
                            server={"model_name": "tiny"}), name="vlkit", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _ask(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": QUESTION, "max_tokens": 12, "temperature": 0, "ignore_eos": True})


def _rank_actors() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("vlkit-tp-")]


def test_tp2_replica_matches_tp1_and_places_its_rank_in_the_placement_group(tp_cluster, reference):
    r = _ask(tp_cluster)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == reference  # greedy TP=2 == TP=1
    ranks = _rank_actors()
    assert [a["name"].rsplit("-", 1)[1] for a in ranks] == ["rank1"]
    groups = [g for g in ray.util.placement_group_table().values()
              if g["state"] == "CREATED" and len(g["bundles"]) == 2]
    assert len(groups) == 1, "the replica did not reserve one bundle per rank"


def test_a_dead_rank_fails_the_replica_which_ray_serve_replaces(tp_cluster, reference):
    (victim,) = _rank_actors()
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    t = time.time()
    failed = None
    while time.time() - t < 30:  # the engine notices at its next step: an error, not a hang
        r = _ask(tp_cluster)
        if r.status_code != 200:
            failed = r
            break
        time.sleep(0.2)
    assert failed is not None and failed.status_code in (500, 503), "the dead rank went unnoticed"
    assert "error" in failed.json()
    # the replica fails its health check; Ray Serve starts a new one, with a new rank actor
    deadline, ok = time.time() + 120, None
    while time.time() < deadline:
        r = _ask(tp_cluster)
        if r.status_code == 200:
            ok = r
            break
        time.sleep(1.0)
    assert ok is not None, "no replacement replica served"
    assert ok.json()["choices"][0]["message"]["content"] == reference
    assert [a["name"] for a in _rank_actors()] != [victim["name"]]
