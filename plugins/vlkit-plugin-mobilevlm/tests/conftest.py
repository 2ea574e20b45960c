"""Tiny MobileVLM checkpoints shared by the direct tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vlkit_plugin_mobilevlm.checkpoints import tiny_mobilevlm

    root = tmp_path_factory.mktemp("mobilevlm-ckpts")
    return {
        "v1": tiny_mobilevlm(root / "v1", version="v1"),
        "v2": tiny_mobilevlm(root / "v2", version="v2"),
        "v2-st": tiny_mobilevlm(root / "v2-st", version="v2", fmt="safetensors", shards=2),
        "v1-notower": tiny_mobilevlm(root / "v1-notower", version="v1", tower_in_checkpoint=False),
    }
