"""Tiny checkpoints written once per session for the unit tests (the conformance classes write
their own)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    from vlkit_plugin_deepseek import checkpoints as C

    root = tmp_path_factory.mktemp("deepseek")
    return {
        "hf": C.tiny_deepseek_vl(root / "hf", seed=3),
        "hybrid": C.tiny_deepseek_vl_hybrid(root / "hybrid", seed=4),
        "orig13": C.tiny_deepseek_vl_original(root / "orig13", hybrid=False, seed=3, twin=False),
        "orig7": C.tiny_deepseek_vl_original(root / "orig7", hybrid=True, seed=4, twin=False),
    }
