"""Continuous batching: which tokens of which sequences run in the next step.

Each step, under a token budget (``max_prefill_token_num``) and at most ``max_batch_size``
sequences:

1. running sequences, oldest first, get their next tokens: one for a decode, or the next chunk
   of a long prompt (chunked prefill). When blocks run out, the most recently arrived running
   sequence is preempted: its blocks are freed and it goes back to the front of the waiting
   queue, to be recomputed later (preemption by recompute);
2. if nothing was preempted, waiting sequences join, oldest first, each starting after the
   blocks the prefix cache already holds for it, including blocks that a sequence scheduled
   earlier in the same step is about to compute (a shared system prompt is prefilled once).

Tokens of all scheduled sequences are packed into one flat batch by the runner; nothing is
padded. A sequence that cannot grow even with the whole cache to itself finishes with
``"length"``.

LongRoPE models (``recompute_above`` = the pretraining length): a sequence longer than that
uses the long rotary factors for all its tokens, as transformers' Phi-3 does. One that grows
past it while running is sent back to the front of the waiting queue to be computed again, and
its cache keys change with the factors, so that short-factor blocks are never reused for it.
"""

from __future__ import annotations

import bisect
import time
from collections import deque

from vlkit.engine.block_manager import BlockManager
from vlkit.engine.sequence import ScheduledChunk, Sequence, SequenceStatus


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_batch_size: int, max_num_batched_tokens: int,
                 recompute_above: int | None = None):
        self.bm = block_manager
        self.max_batch_size = max_batch_size
        self.token_budget = max_num_batched_tokens
        self.recompute_above = recompute_above
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival
        self.num_preemptions = 0
        self.num_rope_recomputes = 0

    def _long(self, seq: Sequence) -> bool:
        return self.recompute_above is not None and seq.num_tokens > self.recompute_above

    def _recompute_grown(self) -> None:
        """Send running sequences that just outgrew the short rotary factors back to be recomputed."""
        for seq in [s for s in self.running if not s.rope_long and self._long(s)]:
            self._send_back(seq)
            self.num_rope_recomputes += 1

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take ``seq`` out (finished or aborted) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.bm.free(seq)

    def _send_back(self, seq: Sequence) -> None:
        """Free a running sequence's blocks and put it first in line, to be computed again."""
        self.running.remove(seq)
        self.bm.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def _preempt(self, seq: Sequence) -> None:
        self._send_back(seq)
        self.num_preemptions += 1

    def _take(self, seq: Sequence, n: int) -> ScheduledChunk:
        """Give ``seq`` the blocks for its next ``n`` tokens; key the full ones now, so that a
        sequence admitted later in this step can share them (BlockManager.register_scheduled)."""
        self.bm.append(seq, n)
        self.bm.register_scheduled(seq, seq.num_computed_tokens + n)
        return ScheduledChunk(seq, n, seq.num_computed_tokens + n == seq.num_tokens)

    def schedule(self) -> tuple[list[ScheduledChunk], list[Sequence]]:
        """The chunks to run this step, and sequences that must finish for lack of cache."""
        budget = self.token_budget
        chunks: list[ScheduledChunk] = []
        out_of_cache: list[Sequence] = []
        preempted = False
        if self.recompute_above is not None:
            self._recompute_grown()
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.bm.can_append(seq, n):
                if len(self.running) == 1 and not chunks:
                    # Alone and the whole cache is not enough: it can never continue.
                    self.running.remove(seq)
                    self.bm.free(seq)
                    out_of_cache.append(seq)
                    break
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                chunks.append(self._take(seq, n))
                budget -= n
                i += 1
                continue
            # seq was preempted or dropped: running[i] is now the next one (or the list ended)
            if seq in self.running:
                i += 1
        if preempted:
            return chunks, out_of_cache
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            seq.rope_long = self._long(seq)  # before the lookup: the factors are part of the keys
            cached = self.bm.match_prefix(seq)
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self.bm.can_append(seq, n):
                if not self.running and not chunks and n == seq.num_tokens - seq.num_computed_tokens:
                    # Even an empty cache cannot hold it.
                    self.waiting.popleft()
                    self.bm.free(seq)
                    out_of_cache.append(seq)
                    continue
                self.bm.free(seq)  # give back prefix blocks it was holding
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.bm.record_prefix_hit(seq, cached)
            if not seq.admitted:
                seq.num_cached_tokens = cached
                seq.queue_time = time.monotonic() - seq.added_at
            seq.admitted = True
            chunks.append(self._take(seq, n))
            bisect.insort(self.running, seq, key=lambda s: s.arrival)
            budget -= n
        return chunks, out_of_cache

    def finish_step(self, chunks: list[ScheduledChunk]) -> None:
        """Mark the chunks' tokens computed (their full blocks were keyed when scheduled)."""
        for c in chunks:
            c.seq.num_computed_tokens += c.num_tokens
        self.bm.confirm_scheduled()
