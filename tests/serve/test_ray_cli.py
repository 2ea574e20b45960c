"""``vlkit serve MODEL --replicas 2``: a local Ray instance, two replicas, one endpoint, Ctrl-C stops it."""

from __future__ import annotations

import json
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
            if r.status_code in (404, 503) and not replicas:  # Ray Serve's proxy is up, the app not yet
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


def test_bench_replicas_record(tmp_path, capsys):
    """``vlkit bench replicas`` end to end on a tiny run: every request answered and counted."""
    from vlkit.cli import main as cli_main

    out = tmp_path / "replicas.json"
    assert cli_main(["bench", "replicas", "--replica-counts", "2", "--requests", "8", "--new-tokens", "4",
                     "--concurrency", "4", "--repeats", "1", "--output", str(out)]) == 0
    rec = json.loads(out.read_text())
    (row,) = rec["results"]
    assert row["replicas"] == 2 and row["output_tokens"] == 8 * 4 and sum(row["served_by_replica"]) == 8
    assert row["speedup_vs_first"] == 1.0 and "| 2 |" in capsys.readouterr().out
