"""Tiny Idefics3 checkpoints shared by the direct tests (built once per session), and helpers."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vlkit_plugin_idefics3 import checkpoints as c

    root = tmp_path_factory.mktemp("idefics3-ckpts")
    return {
        "split": c.tiny_idefics3(root / "split"),
        "nosplit": c.tiny_idefics3(root / "nosplit", seed=1, do_image_splitting=False),
        "tied": c.tiny_idefics3(root / "tied", seed=2, tie_word_embeddings=True, max_shard_size="150KB"),
    }


@pytest.fixture(scope="session")
def hf_models(ckpts):
    """transformers' model and processor of each checkpoint (the reference)."""
    import torch
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    return {name: (Idefics3ForConditionalGeneration.from_pretrained(p, dtype=torch.float32).eval(),
                   AutoProcessor.from_pretrained(p)) for name, p in ckpts.items()}
