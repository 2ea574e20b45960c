"""One request as the engine tracks it: its tokens, inputs embeddings, positions and KV blocks."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from vlkit.engine.request import Request

__all__ = ["Request", "ScheduledChunk", "Sequence", "SequenceStatus"]

_arrival = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """A request in flight.

    ``token_ids`` is prompt + generated; ``num_computed_tokens`` of them have their keys and
    values in the cache (blocks ``block_table``); the scheduler feeds the next ones.
    """

    def __init__(self, req: Request, generator: torch.Generator | None = None):
        self.request_id = req.request_id
        self.gen_config = req.gen_config
        self.prompt_len = len(req.prompt_token_ids)
        self.token_ids: list[int] = list(req.prompt_token_ids)
        self.arrival = next(_arrival)
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []  # prefix-cache keys of the leading full blocks
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.admitted = False
        self.added_at = time.monotonic()  # when the engine queued it
        self.queue_time: float | None = None  # seconds from added_at to its first scheduling
        self.rope_long = False  # LongRoPE: computed with the long factors (part of its cache keys)
        self.finish_reason: str | None = None
        self.generator = generator
        self.logprobs: list[dict[int, float]] | None = [] if req.gen_config.logprobs is not None else None
        self.detokenizer: Any = None
        self.input_embeddings = list(req.input_embeddings)
        self.embedding_ranges = [tuple(r) for r in req.embedding_ranges]
        self.embedding_hashes = list(req.embedding_hashes)
        self.mrope_positions = req.mrope_positions
        self.mrope_delta = int(req.mrope_position_delta)

    # -- sizes --------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    # -- inputs of a chunk ----------------------------------------------------------------
    def positions(self, start: int, end: int) -> torch.Tensor:
        """Position ids of tokens ``[start, end)``: ``[n]``, or ``[3, n]`` with M-RoPE."""
        if self.mrope_positions is None:
            return torch.arange(start, end)
        p = self.prompt_len
        parts = []
        if start < p:
            parts.append(self.mrope_positions[:, start : min(end, p)].to(torch.int64))
        if end > p:
            gen = torch.arange(max(start, p), end) + self.mrope_delta
            parts.append(gen.expand(3, -1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def embedding_slices(self, start: int, end: int) -> list[tuple[int, torch.Tensor]]:
        """``(offset_in_chunk, rows)`` of inputs embeddings that overlap tokens ``[start, end)``."""
        out = []
        for emb, (s, e) in zip(self.input_embeddings, self.embedding_ranges):
            lo, hi = max(s, start), min(e, end)
            if lo < hi:
                out.append((lo - start, emb[lo - s : hi - s]))
        return out

    def block_extra_keys(self, block_idx: int, block_size: int) -> tuple[str, ...]:
        """Hashes of the embeddings whose range overlaps block ``block_idx``."""
        lo, hi = block_idx * block_size, (block_idx + 1) * block_size
        return tuple(h for h, (s, e) in zip(self.embedding_hashes, self.embedding_ranges) if s < hi and e > lo)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, tokens={self.num_tokens}, computed={self.num_computed_tokens}, "
            f"blocks={len(self.block_table)}, {self.status.value})"
        )


@dataclass
class ScheduledChunk:
    """``num_tokens`` tokens of ``seq`` starting at ``seq.num_computed_tokens`` run this step."""

    seq: Sequence
    num_tokens: int
    samples: bool = field(default=False)  # the chunk ends at the last token: sample the next one
