"""Tensor parallelism across "nodes": two processes on loopback, torchrun-style flags.

Node 1 is a real ``vlkit serve MODEL --tp 2 --nnodes 2 --node-rank 1 --master-addr ...`` process;
node 0 is an engine here (``EngineConfig(nnodes=2, ...)``) or a second ``vlkit serve`` process
that serves HTTP. Greedy tokens must equal TP=1; a node that dies fails its engine, no hang.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from engine_helpers import assert_next_step_fails_with_dead_worker, prompts

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine
from vlkit.engine.cluster import Topology, free_port_pair
from vlkit.engine.workers import WorkerDiedError
from vlkit.testing.server import free_port

GEN = GenerationConfig(max_new_tokens=10, ignore_eos=True)
SECRET = "multinode-test-secret"


def _node1(path, port: int, *extra: str, secret: str = SECRET) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vlkit.cli", "serve", str(path), "--tp", "2", "--nnodes", "2", "--node-rank", "1",
         "--master-addr", "127.0.0.1", "--master-port", str(port), "--device", "cpu", *extra],
        env={**os.environ, "VLKIT_TP_SECRET": secret}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def test_topology_splits_ranks_and_reads_torchrun_env(monkeypatch):
    t = Topology(world_size=4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=1234)
    assert t.ranks_of(0) == [0, 1] and t.ranks_of(1) == [2, 3] and t.remote_ranks == [2, 3]
    assert t.init_method == "tcp://10.0.0.1:1234" and t.control_address == ("10.0.0.1", 1235)
    with pytest.raises(ValueError, match="must divide"):
        Topology(world_size=3, nnodes=2)
    with pytest.raises(ValueError, match="node-rank"):
        Topology(world_size=2, nnodes=2, node_rank=2)
    monkeypatch.setenv("MASTER_ADDR", "10.1.2.3")
    monkeypatch.setenv("MASTER_PORT", "4242")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    t = Topology.from_env(2)
    assert (t.nnodes, t.node_rank, t.master_addr, t.master_port) == (2, 1, "10.1.2.3", 4242)
    assert Topology.from_env(2, nnodes=1, node_rank=0).nnodes == 1  # flags win over the environment


def test_two_nodes_tp2_equals_tp1_and_a_dead_node_fails_cleanly(llama_path, monkeypatch):
    ps = prompts(3, seed=7)
    with LLMEngine.from_pretrained(llama_path, EngineConfig(tp=1, num_blocks=64, device="cpu")) as eng:
        ref = [o.token_ids for o in eng.generate(ps, GEN)]
    port = free_port_pair()
    monkeypatch.setenv("VLKIT_TP_SECRET", SECRET)
    node1 = _node1(llama_path, port)
    try:
        eng = LLMEngine.from_pretrained(llama_path, EngineConfig(tp=2, nnodes=2, master_addr="127.0.0.1",
                                                                 master_port=port, num_blocks=64, device="cpu"))
        try:
            (remote,) = eng.runner.workers.processes
            assert remote.name.endswith("remote")
            assert [o.token_ids for o in eng.generate(ps, GEN)] == ref
            # the other node goes away (its whole process group, as a machine would)
            _kill_tree(node1)
            deadline = time.time() + 10
            while remote.is_alive() and time.time() < deadline:
                time.sleep(0.05)
            assert_next_step_fails_with_dead_worker(eng)
        finally:
            eng.close()
    finally:
        _stop(node1)


def test_node0_refuses_a_peer_without_the_secret(llama_path, monkeypatch):
    port = free_port_pair()
    monkeypatch.setenv("VLKIT_TP_SECRET", SECRET)
    intruder = _node1(llama_path, port, secret="wrong-secret")
    try:
        import vlkit.engine.workers as workers

        monkeypatch.setattr(workers, "STARTUP_TIMEOUT_S", 8.0)
        with pytest.raises((WorkerDiedError, TimeoutError), match="did not connect"):
            LLMEngine.from_pretrained(llama_path, EngineConfig(tp=2, nnodes=2, master_port=port, num_blocks=16,
                                                               device="cpu"))
    finally:
        _stop(intruder)


def test_serve_on_two_nodes_rank0_serves_http(llama_path):
    port, http = free_port_pair(), free_port()
    node1 = _node1(llama_path, port)
    node0 = subprocess.Popen(
        [sys.executable, "-m", "vlkit.cli", "serve", str(llama_path), "--tp", "2", "--nnodes", "2", "--node-rank", "0",
         "--master-addr", "127.0.0.1", "--master-port", str(port), "--device", "cpu", "--num-blocks", "32",
         "--port", str(http)],
        env={**os.environ, "VLKIT_TP_SECRET": SECRET}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "ignore_eos": True}
        r = httpx.post(f"http://127.0.0.1:{http}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 6
        # node 1 dies: node 0 says so on /health and exits 1 (for a supervisor to restart it)
        _kill_tree(node1)
        httpx.post(f"http://127.0.0.1:{http}/v1/chat/completions", json=body, timeout=60)
        assert node0.wait(timeout=30) == 1
    finally:
        out0 = _stop(node0)
        _stop(node1)
    assert "the engine failed" in out0


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and its children at once, as a machine that goes away would."""
    for pid in [*_children(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(x) for x in out.split()]


def test_tp_backend_is_checked():
    with pytest.raises(ValueError, match="tp_backend must be"):
        EngineConfig(tp_backend="mpi")
    with pytest.raises(ValueError, match="leave nnodes at 1"):
        EngineConfig(tp=2, nnodes=2, tp_backend="ray")


def test_ranks_as_ray_actors_equal_tp1_and_die_with_the_engine(llama_path):
    """``tp_backend="ray"`` outside Ray Serve: rank 1 is an actor of the running Ray; TP=2 == TP=1,
    the actor is killed on close, and a killed actor fails the engine's next step."""
    ray = pytest.importorskip("ray")
    ps = prompts(3, seed=4)

    def run(**kw):
        with LLMEngine.from_pretrained(llama_path, EngineConfig(device="cpu", num_blocks=64, **kw)) as eng:
            for i, p in enumerate(ps):
                eng.add_request(f"r{i}", p, GenerationConfig(max_new_tokens=8, ignore_eos=True))
            out: dict[str, list[int]] = {}
            while eng.has_unfinished():
                for o in eng.step():
                    out.setdefault(o.request_id, []).extend(o.new_token_ids)
            return out, list(eng._rank_actors)

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        ref, _ = run()
        got, actors = run(tp=2, tp_backend="ray")
        assert got == ref and len(actors) == 1
        with pytest.raises(ray.exceptions.RayActorError):  # closed with its engine
            ray.get(actors[0].pid.remote(), timeout=30)
        with LLMEngine.from_pretrained(llama_path, EngineConfig(device="cpu", num_blocks=64, tp=2,
                                                                tp_backend="ray")) as eng:
            ray.kill(eng._rank_actors[0], no_restart=True)
            assert_next_step_fails_with_dead_worker(eng)
    finally:
        ray.shutdown()
