"""The LLM engine: paged KV cache, continuous batching, prefix caching, sampling, TP.

``from vlkit.engine import LLMEngine, RequestOutput`` (imported lazily: torch loads on first use).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LLMEngine", "RequestOutput"]


def __getattr__(name: str) -> Any:
    if name == "LLMEngine":
        from vlkit.engine.engine import LLMEngine

        return LLMEngine
    if name == "RequestOutput":
        from vlkit.engine.outputs import RequestOutput

        return RequestOutput
    raise AttributeError(name)
