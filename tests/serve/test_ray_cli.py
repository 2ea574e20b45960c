"""``vlkit serve MODEL --replicas 2``: a local Ray instance, two replicas, one endpoint, Ctrl-C stops it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from vlkit.testing.server import free_port

pytest.importorskip("ray.serve")


def test_serve_replicas_from_the_cli(llava_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vlkit.cli", "serve", str(llava_dir), "--replicas", "2",
                             "--port", str(port), "--num-blocks", "64", "--model-name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        replicas, deadline, i = set(), time.time() + 180, 0
        while time.time() < deadline and len(replicas) < 2:
            i += 1  # each its own conversation: the router places a conversation by its opening
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=30, json={
                    "model": "tiny", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 2})
            except httpx.HTTPError:
                time.sleep(0.5)
                continue
            assert r.status_code == 200, r.text
            replicas.add(r.headers["x-vlkit-replica"])
        assert len(replicas) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert "2 replicas on Ray Serve" in out
