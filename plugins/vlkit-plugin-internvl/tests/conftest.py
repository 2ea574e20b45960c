"""Shared fixtures: tiny checkpoints written once per session."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # importlib mode: make internvl_reference importable


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """``{"hf": ..., "qwen2": ..., "hf-llama": ..., "internlm2": ...}``: the same weights in both layouts."""
    from vlkit_plugin_internvl.checkpoints import tiny_internvl_hf, tiny_internvl_original

    root = tmp_path_factory.mktemp("internvl")
    hf = tiny_internvl_hf(root / "hf", text="qwen2", seed=0)
    hf_llama = tiny_internvl_hf(root / "hf-llama", text="llama", seed=1)
    return {
        "hf": hf,
        "qwen2": tiny_internvl_original(root / "qwen2", llm="qwen2", hf_checkpoint=hf),
        "hf-llama": hf_llama,
        "internlm2": tiny_internvl_original(root / "internlm2", llm="internlm2", hf_checkpoint=hf_llama, shards=2),
    }
