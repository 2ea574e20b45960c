"""Shared test setup."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # importlib mode: make qwen_reference importable


MODELS = {"qwen2-vl": ("tiny_qwen2_vl", "Qwen2VLForConditionalGeneration"),
          "qwen2.5-vl": ("tiny_qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration")}


@pytest.fixture(scope="session", params=sorted(MODELS))
def qwen(request, tmp_path_factory):
    """``(family, checkpoint dir, pipeline, reference)`` for each of Qwen2-VL and Qwen2.5-VL."""
    import transformers
    from qwen_reference import QwenReference
    from vlkit_plugin_qwen import checkpoints

    import vlkit
    from vlkit.config import EngineConfig

    factory, arch = MODELS[request.param]
    path = getattr(checkpoints, factory)(tmp_path_factory.mktemp(request.param) / "model", seed=3)
    pipe = vlkit.pipeline(path, engine_config=EngineConfig(session_len=1024, device="cpu", dtype="float32",
                                                           num_blocks=256))
    ref = QwenReference(path, getattr(transformers, arch))
    yield request.param, path, pipe, ref
    pipe.close()
