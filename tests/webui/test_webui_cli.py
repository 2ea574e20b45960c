"""``vlkit webui`` and ``vlkit demo --webui`` as a user runs them: real processes on real ports."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from vlkit.testing.server import free_port

pytest.importorskip("uvicorn")


def _start(*args: str) -> tuple[subprocess.Popen, str]:
    """Start ``vlkit ARGS`` and wait for the line that says where the page is."""
    proc = subprocess.Popen([sys.executable, "-m", "vlkit.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    lines = []
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "vlkit webui:" in line and "http://" in line:
            url = line.rsplit("http://", 1)[1].strip().rstrip("/")
            for _ in range(100):  # printed just before uvicorn binds
                try:
                    httpx.get(f"http://{url}/webui/info", timeout=2)
                    return proc, f"http://{url}"
                except httpx.HTTPError:
                    time.sleep(0.1)
    proc.kill()
    raise AssertionError("the page did not come up:\n" + "".join(lines))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_webui_model_serves_the_page_and_the_api(llava_dir):
    port = free_port()
    proc, url = _start("webui", str(llava_dir), "--port", str(port), "--num-blocks", "64")
    try:
        assert url == f"http://127.0.0.1:{port}"
        page = httpx.get(url + "/").text
        assert '<textarea id="prompt"' in page and "/webui/webui.js" in page
        info = httpx.get(url + "/webui/info").json()
        assert info["family"] == "llava" and info["random_weights"] is True and info["backend"] == "in-process"
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": info["model"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    finally:
        _stop(proc)


def test_demo_webui_serves_the_random_weight_demo_checkpoint(tmp_path):
    port = free_port()
    proc, url = _start("demo", "--webui", "--port", str(port), "--dir", str(tmp_path))
    try:
        info = httpx.get(url + "/webui/info").json()
        assert info["random_weights"] is True and info["model"].startswith("tiny-")
    finally:
        _stop(proc)


@pytest.mark.parametrize("args, message", [
    ([], "give a MODEL"),
    (["some/model", "--server", "http://127.0.0.1:1"], "not both"),
])
def test_webui_bad_arguments_say_what_is_wrong(args, message):
    r = subprocess.run([sys.executable, "-m", "vlkit.cli", "webui", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
