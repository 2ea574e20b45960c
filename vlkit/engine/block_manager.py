"""KV-cache block accounting: allocation, reference counts and prefix caching.

Blocks hold ``block_size`` tokens. A sequence's ``block_table`` lists its blocks in order.
Every *full* block whose keys/values are computed gets a key: a hash chain over the token ids
of all blocks up to it, plus the extra keys of the block (the content hashes of images whose
embeddings overlap it). A new sequence whose leading full blocks have known keys shares those
blocks (reference count + 1) and skips their prefill. Free blocks keep their key until they are
handed out again (least recently freed first), so finished requests still serve later ones.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from vlkit.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: int | None = None  # prefix-cache key once the block is full and computed
    token_ids: tuple[int, ...] = ()


class BlockManager:
    """Hands out KV-cache blocks to sequences.

    Counters (read them, e.g. in tests or stats):
        num_total_blocks, num_free_blocks (refcount 0, cached or not), num_used_blocks,
        num_cached_blocks (blocks holding a prefix-cache key), num_allocated_blocks (blocks
        handed out fresh since start), prefix_hit_blocks / prefix_hit_tokens (blocks / tokens
        reused from the cache) and prefix_query_tokens (tokens looked up), counted once per admission
        of a sequence (again after a preemption); peak_used_blocks (high-water mark of
        num_used_blocks since the start or :meth:`reset_peak`).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[int, int] = {}  # key -> block id
        # The cache is allocated uninitialised (memory is only touched when used); a block is
        # zeroed by the runner the first time it is handed out, so padded reads stay finite.
        self._never_used = [True] * num_blocks
        self.pending_zero: list[int] = []
        self.num_allocated_blocks = 0
        self.prefix_hit_blocks = 0
        self.prefix_hit_tokens = 0
        self.prefix_query_tokens = 0
        self.peak_used_blocks = 0  # high-water mark of num_used_blocks (reset_peak starts it again)
        self._provisional: list[int] = []  # blocks keyed for the step being scheduled (register_scheduled)

    # -- counters ---------------------------------------------------------------------------
    @property
    def num_total_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def reset_peak(self) -> None:
        """Start the ``peak_used_blocks`` high-water mark again from the blocks in use now."""
        self.peak_used_blocks = self.num_used_blocks

    def _note_peak(self) -> None:
        used = len(self.blocks) - len(self._free)
        if used > self.peak_used_blocks:
            self.peak_used_blocks = used

    def stats(self) -> dict[str, int]:
        return {
            "num_total_blocks": self.num_total_blocks,
            "num_free_blocks": self.num_free_blocks,
            "num_used_blocks": self.num_used_blocks,
            "num_cached_blocks": self.num_cached_blocks,
            "num_allocated_blocks": self.num_allocated_blocks,
            "prefix_hit_blocks": self.prefix_hit_blocks,
            "prefix_hit_tokens": self.prefix_hit_tokens,
            "prefix_query_tokens": self.prefix_query_tokens,
            "peak_used_blocks": self.peak_used_blocks,
        }

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- allocation -------------------------------------------------------------------------
    def _take_free(self) -> Block:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None:
            if self._cached.get(block.key) == block_id:
                del self._cached[block.key]
            block.key, block.token_ids = None, ()
        block.ref_count = 1
        self.num_allocated_blocks += 1
        if self._never_used[block_id]:
            self._never_used[block_id] = False
            self.pending_zero.append(block_id)
        return block

    def take_pending_zero(self) -> list[int]:
        """Blocks handed out for the first time since the last call (to be zeroed)."""
        out, self.pending_zero = self.pending_zero, []
        return out

    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether ``num_tokens`` more tokens of ``seq`` fit with the free blocks left."""
        need = self.blocks_for(seq.num_computed_tokens + num_tokens) - len(seq.block_table)
        return need <= len(self._free)

    def append(self, seq: Sequence, num_tokens: int) -> None:
        """Give ``seq`` blocks for its next ``num_tokens`` tokens (check :meth:`can_append` first)."""
        need = self.blocks_for(seq.num_computed_tokens + num_tokens) - len(seq.block_table)
        if need > len(self._free):
            raise RuntimeError("out of KV-cache blocks")
        for _ in range(need):
            seq.block_table.append(self._take_free().block_id)
        self._note_peak()

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s blocks (cached ones stay reusable until handed out again)."""
        for block_id in reversed(seq.block_table):  # tail blocks are evicted first
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def allocate_raw(self, num_blocks: int) -> list[int]:
        """Blocks outside any sequence (e.g. for ``get_logits``); give back with :meth:`free_raw`."""
        if num_blocks > len(self._free):
            raise RuntimeError("out of KV-cache blocks")
        out = [self._take_free().block_id for _ in range(num_blocks)]
        self._note_peak()
        return out

    def free_raw(self, block_ids: list[int]) -> None:
        for block_id in reversed(block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None

    # -- prefix caching -----------------------------------------------------------------------
    def _key(self, seq: Sequence, idx: int, prev: int | None) -> int:
        bs = self.block_size
        tokens = tuple(seq.token_ids[idx * bs : (idx + 1) * bs])
        return hash((prev, tokens, seq.block_extra_keys(idx, bs), seq.rope_long))

    def match_prefix(self, seq: Sequence) -> int:
        """Attach the cached blocks matching ``seq``'s leading full blocks; return tokens reused.

        At least one token is always left to compute (its logits are needed). The hit counters
        move only when the scheduler admits ``seq`` (:meth:`record_prefix_hit`): a sequence that
        does not fit yet gives its blocks back and is matched again at a later step.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        bs = self.block_size
        prev = None
        for idx in range((seq.num_tokens - 1) // bs):
            key = self._key(seq, idx, prev)
            block_id = self._cached.get(key)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.token_ids != tuple(seq.token_ids[idx * bs : (idx + 1) * bs]):
                break
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(key)
            prev = key
        hit = len(seq.block_table)
        seq.num_computed_tokens = hit * bs
        self._note_peak()
        return hit * bs

    def record_prefix_hit(self, seq: Sequence, hit_tokens: int) -> None:
        """Count one admission of ``seq`` that reused ``hit_tokens`` tokens from the cache."""
        if not self.enable_prefix_caching:
            return
        self.prefix_query_tokens += seq.num_tokens
        self.prefix_hit_blocks += hit_tokens // self.block_size
        self.prefix_hit_tokens += hit_tokens

    def register_scheduled(self, seq: Sequence, num_tokens: int) -> None:
        """Key the full blocks of ``seq`` that hold its first ``num_tokens`` tokens once the step
        being scheduled has run.

        Called when a chunk is scheduled, so that a sequence admitted later in the same step
        can share blocks this step computes (16 requests with one system prompt prefill it
        once): every attention layer writes the whole step's keys/values before any chunk
        reads the cache. Until :meth:`confirm_scheduled`, the keys are provisional;
        :meth:`forget_scheduled` drops them if the step fails.
        """
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(num_tokens // bs, len(seq.block_table))
        for idx in range(len(seq.block_hashes), full):
            prev = seq.block_hashes[-1] if seq.block_hashes else None
            key = self._key(seq, idx, prev)
            seq.block_hashes.append(key)
            block = self.blocks[seq.block_table[idx]]
            if block.key is None and key not in self._cached:
                block.key = key
                block.token_ids = tuple(seq.token_ids[idx * bs : (idx + 1) * bs])
                self._cached[key] = block.block_id
                self._provisional.append(block.block_id)

    def confirm_scheduled(self) -> None:
        """The step ran: the blocks keyed while scheduling it now hold their values."""
        self._provisional.clear()

    def forget_scheduled(self) -> None:
        """The step failed: unkey the blocks keyed while scheduling it (their values are not there)."""
        for block_id in self._provisional:
            block = self.blocks[block_id]
            if block.key is not None and self._cached.get(block.key) == block_id:
                del self._cached[block.key]
            block.key, block.token_ids = None, ()
        self._provisional.clear()
