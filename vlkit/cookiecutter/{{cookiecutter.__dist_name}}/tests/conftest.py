from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: Any) -> Path:
    """A tiny checkpoint of this family, written once per test session."""
    from {{ cookiecutter.__package }}.hooks import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "model")


@pytest.fixture(scope="session")
def hf_config(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "config.json").read_text())
