"""vlkit: run vision-language models fast; add a new VLM architecture as a plugin.

The public API. Importing ``vlkit`` is light (no torch): heavy pieces load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlkit.api.media import encode_image_base64, load_image
from vlkit.config import (
    ChatTemplateConfig,
    EngineConfig,
    GenerationConfig,
    PytorchEngineConfig,
    TurbomindEngineConfig,
    VisionConfig,
)
from vlkit.contract.hookspecs import hookimpl
from vlkit.contract.messages import IMAGE_TOKEN, VIDEO_TOKEN

__version__ = "0.1.0"

__all__ = [
    "IMAGE_TOKEN",
    "VIDEO_TOKEN",
    "ChatTemplateConfig",
    "EngineConfig",
    "GenerationConfig",
    "Pipeline",
    "PytorchEngineConfig",
    "Response",
    "Session",
    "TurbomindEngineConfig",
    "VisionConfig",
    "__version__",
    "encode_image_base64",
    "hookimpl",
    "load_image",
    "pipeline",
]

_LAZY = {"pipeline": "vlkit.api.pipeline", "Pipeline": "vlkit.api.pipeline", "Session": "vlkit.api.pipeline", "Response": "vlkit.api.pipeline"}

if TYPE_CHECKING:  # pragma: no cover
    from vlkit.api.pipeline import Pipeline, Response, Session, pipeline


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlkit' has no attribute {name!r}")
