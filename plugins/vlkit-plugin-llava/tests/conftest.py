"""Tiny LLaVA checkpoints shared by the direct tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch
    from vlkit_plugin_llava import checkpoints as c

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("llava-ckpts")
    out = {
        "llava": c.tiny_llava(root / "llava"),
        "next": c.tiny_llava_next(root / "next"),
    }
    out["orig15"] = c.tiny_llava_original(root / "orig15", version="1.5", hf_checkpoint=out["llava"])
    out["orig16"] = c.tiny_llava_original(root / "orig16", version="1.6", hf_checkpoint=out["next"], shards=2)
    out["orig15-bin"] = c.tiny_llava_original(
        root / "orig15-bin", version="1.5", hf_checkpoint=out["llava"], fmt="bin", shards=3
    )
    return out
