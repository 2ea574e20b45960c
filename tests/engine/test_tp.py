"""Tensor parallelism on CPU: two processes over gloo give the same tokens as one."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
from engine_helpers import assert_next_step_fails_with_dead_worker, prompts

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine import LLMEngine

GEN = GenerationConfig(max_new_tokens=12, ignore_eos=True)


def _tokens(path, tp, ps):
    with LLMEngine.from_pretrained(path, EngineConfig(tp=tp, num_blocks=64, device="cpu")) as eng:
        out = [o.token_ids for o in eng.generate(ps, GEN)]
        logits = eng.get_logits(ps[0])
        workers = eng.runner.workers.processes if tp > 1 else []
    return out, logits, workers


def _alive_children():
    return [p for p in multiprocessing.active_children() if p.name.startswith("vlkit-tp")]


@pytest.mark.parametrize("name", ["llama_path", "qwen2_path", "internlm2_path", "phi3_path"])
def test_tp2_equals_tp1(request, name):
    import torch

    path = request.getfixturevalue(name)
    ps = prompts(4, seed=41)
    ref, ref_logits, _ = _tokens(path, 1, ps)
    out, logits, workers = _tokens(path, 2, ps)
    assert out == ref
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    assert workers and not any(p.is_alive() for p in workers)
    assert _alive_children() == []


def test_dead_worker_surfaces_as_error(llama_path):
    eng = LLMEngine.from_pretrained(llama_path, EngineConfig(tp=2, num_blocks=32, device="cpu"))
    try:
        (worker,) = eng.runner.workers.processes
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=10)
        assert_next_step_fails_with_dead_worker(eng)
    finally:
        eng.close()
    assert _alive_children() == []


def test_interpreter_exit_leaves_no_worker(llama_path, tmp_path):
    import subprocess
    import sys

    import psutil

    script = tmp_path / "leak.py"
    script.write_text(
        "from vlkit.config import EngineConfig\n"
        "from vlkit.engine import LLMEngine\n"
        f"eng = LLMEngine.from_pretrained({llama_path!r}, EngineConfig(tp=2, num_blocks=8, device='cpu'))\n"
        "print(*[p.pid for p in eng.runner.workers.processes])\n"
        "eng.generate([5, 6, 7], __import__('vlkit.config').config.GenerationConfig(max_new_tokens=2))\n"
        # no close(): exit must still stop the worker
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    pids = [int(x) for x in res.stdout.split()]
    deadline = time.time() + 10
    while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids):
        time.sleep(0.2)
    assert pids and not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
