"""glibc malloc tuning (vlkit/malloc.py): freed activation memory stays mapped for reuse."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# A pipeline's loop thread allocates and frees a 64 MiB tensor, as a prefill step does with
# its activations; the resident size before and after the free says whether the pages were
# kept (no page faults on the next step) or handed back to the OS.
SCRIPT = r"""
import json, threading
import torch
from vlkit.api.loop import EngineLoop
from vlkit.api import malloc

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

loop = EngineLoop()  # applies the tuning before its thread starts
def work():
    base = rss_mib()
    x = torch.ones(64 * 2**20 // 4)
    held = rss_mib() - base
    del x
    return {"held": held, "after_free": rss_mib() - base}
out = loop.call(work)
out["applied"] = malloc.tune_malloc()
loop.close()
print(json.dumps(out))
"""


def _run(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("VLKIT_MALLOC_TUNING", None)
    if env_value is not None:
        env["VLKIT_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loop_thread_keeps_freed_memory_mapped():
    res = _run(None)
    assert res["applied"] is True
    assert res["held"] > 60
    assert res["after_free"] > 60  # kept for the next step, not unmapped


def test_tuning_can_be_turned_off():
    res = _run("0")
    assert res["applied"] is False
    assert res["held"] > 60
    assert res["after_free"] < 16  # glibc's default: the block is unmapped on free
