"""One request as it travels from the pipeline to the engine (no torch import: the pipeline's
preparation builds it before the engine thread sees it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlkit.config import GenerationConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class Request:
    """One request, typed from preparation to the engine: what :mod:`vlkit.api.prepare` makes of
    a conversation, what :meth:`vlkit.engine.engine.LLMEngine.add` takes, and what a
    :class:`Sequence` is built from. One name per concept, from the pipeline to the runner.

    Args:
        prompt_token_ids: the prompt.
        gen_config: sampling and stopping.
        request_id: unique among unfinished requests (the engine makes one when empty).
        input_embeddings: ``[n_i, hidden]`` tensors written over the prompt's token embeddings.
        embedding_ranges: the ``(start, end)`` prompt positions each of ``input_embeddings``
            overwrites (``end - start == n_i``). An image that fills several spans is several
            entries, each with its image's hash.
        embedding_hashes: a content hash per entry of ``input_embeddings``; blocks overlapping
            its range are prefix-cached under it too, so a different image never reuses them.
        mrope_positions: ``[3, prompt_len]`` M-RoPE position ids of the prompt.
        mrope_position_delta: generated token ``k`` (0-based) sits at ``prompt_len + k + delta``
            on all three axes.
        prompt: the prompt text the ids came from (informational).
    """

    prompt_token_ids: list[int]
    gen_config: GenerationConfig = field(default_factory=GenerationConfig)
    request_id: str = ""
    input_embeddings: list[torch.Tensor] = field(default_factory=list)
    embedding_ranges: list[tuple[int, int]] = field(default_factory=list)
    embedding_hashes: list[str] = field(default_factory=list)
    mrope_positions: torch.Tensor | None = None
    mrope_position_delta: int = 0
    prompt: str = ""
