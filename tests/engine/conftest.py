"""Session fixtures: tiny checkpoints written once."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # pytest's importlib mode: make engine_helpers importable

from engine_helpers import write_hf_checkpoint, write_internlm2_from_llama


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def llama_path(ckpt_dir):
    return write_hf_checkpoint(str(ckpt_dir / "llama"), "llama")


@pytest.fixture(scope="session")
def qwen2_path(ckpt_dir):
    return write_hf_checkpoint(str(ckpt_dir / "qwen2"), "qwen2", seed=1, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def internlm2_path(ckpt_dir, llama_path):
    return write_internlm2_from_llama(llama_path, str(ckpt_dir / "internlm2"))


@pytest.fixture(scope="session")
def phi3_path(ckpt_dir):
    return write_hf_checkpoint(str(ckpt_dir / "phi3"), "phi3", seed=2)
