"""CUDA graphs for decode steps.

A decode step of a small model on a GPU is launch-bound: a few hundred kernels of a few
microseconds each, issued one by one from Python. Capturing the step once per batch size and
replaying it issues them all with one call (vLLM and nano-vllm do the same).

What is captured: embedding, the whole decoder (attention through a backend that reads the
block table on the device: ``"triton"`` or ``"flash-attn"``) and the LM head, for a ladder of
batch sizes (:func:`batch_sizes`: 1, 2, 4, 8, then every 8 up to the largest). Everything the
step reads lives in static buffers sized for the largest batch: token ids, positions (``[3, B]``
for M-RoPE models), cache slots, block tables ``[B, max_blocks]`` and context lengths. A step of
``n`` sequences replays the smallest graph of at least ``n`` rows; the ``n`` real rows are
copied in, the padding rows get context length 0 (the kernel reads nothing and returns zeros)
and write their KV into a scratch block the block manager never hands out.

What stays eager: prefill and mixed steps, steps with image embeddings, rotary variants that
need per-sequence lengths (dynamic NTK, LongRoPE), batches above the largest size, and any
step when ``EngineConfig.enforce_eager`` is set. Sampling runs outside the graph, on the logits
rows the step returns (the sampler is already batched and its cost is a few small kernels).

Under tensor parallelism every rank captures the same sizes in the same order (the collectives
inside are NCCL, which CUDA graphs capture); over gloo (CPU) nothing is captured.

For the CPU test suite, :class:`EmulatedGraph` stands in for ``torch.cuda.CUDAGraph``: its
"replay" runs the same function on the same static buffers, so the padding, the buffers and the
bucket choice are tested without a GPU (``VLKIT_EMULATE_CUDA_GRAPHS=1``).
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from vlkit.layers.attention import AttentionContext

logger = logging.getLogger("vlkit.engine")


def emulating() -> bool:
    """Whether graphs are emulated on CPU (tests: ``VLKIT_EMULATE_CUDA_GRAPHS=1``)."""
    return os.environ.get("VLKIT_EMULATE_CUDA_GRAPHS") == "1"


def batch_sizes(max_batch: int) -> list[int]:
    """The captured batch sizes: 1, 2, 4, 8, 16, 24, ... up to and including ``max_batch``."""
    sizes = [s for s in (1, 2, 4) if s < max_batch] + list(range(8, max_batch + 1, 8))
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sorted(set(sizes))


class EmulatedGraph:
    """A stand-in for ``torch.cuda.CUDAGraph`` on CPU: replay calls the captured function."""

    def __init__(self) -> None:
        self._fn: Callable[[], Any] | None = None
        self.output: Any = None

    def capture(self, fn: Callable[[], Any]) -> Any:
        self._fn = fn
        self.output = fn()
        return self.output

    def replay(self) -> None:
        out = self._fn()
        if self.output is not None:
            self.output.copy_(out)


class CudaGraph:
    """One captured ``torch.cuda.CUDAGraph`` sharing a memory pool with the others."""

    def __init__(self, pool: Any) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool
        self.output: Any = None

    def capture(self, fn: Callable[[], Any]) -> Any:  # pragma: no cover - needs CUDA
        with torch.cuda.graph(self.graph, pool=self.pool):
            self.output = fn()
        return self.output

    def replay(self) -> None:  # pragma: no cover - needs CUDA
        self.graph.replay()


class DecodeGraphs:
    """The captured decode steps of one rank.

    Args:
        model: the rank's backbone.
        kv_caches: its KV cache tensors, the last block of each being the scratch block.
        backend: the attention backend the graphs use (``"triton"`` or ``"flash-attn"``).
        max_batch: largest captured batch.
        max_blocks: block-table width (blocks of the longest sequence the engine allows).
        emulate: :class:`EmulatedGraph` instead of CUDA graphs.
    """

    def __init__(self, model: torch.nn.Module, kv_caches: list[torch.Tensor], backend: str, max_batch: int,
                 max_blocks: int, emulate: bool = False):
        self.model = model
        self.kv_caches = kv_caches
        self.backend = backend
        self.emulate = emulate
        self.sizes = batch_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        self.max_blocks = max_blocks
        dev = kv_caches[0].device
        self.device = dev
        num_blocks, block_size = kv_caches[0].shape[1], kv_caches[0].shape[2]
        self.scratch_block = num_blocks - 1
        self.scratch_slot = self.scratch_block * block_size
        rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
        self.rotary = rotary
        self.mrope = bool(getattr(rotary, "mrope_section", None))
        b = self.max_batch
        self.input_ids = torch.zeros(b, dtype=torch.int64, device=dev)
        self.positions = torch.zeros((3, b) if self.mrope else (b,), dtype=torch.int64, device=dev)
        self.slots = torch.full((b,), self.scratch_slot, dtype=torch.int64, device=dev)
        self.block_tables = torch.full((b, max_blocks), self.scratch_block, dtype=torch.int32, device=dev)
        self.context_lens = torch.zeros(b, dtype=torch.int32, device=dev)
        self.graphs: dict[int, EmulatedGraph | CudaGraph] = {}
        self.replays: dict[int, int] = {}  # batch size -> steps that replayed it
        self.capture_seconds = 0.0

    # -- which steps ----------------------------------------------------------------------
    def can_run(self, inp: Any) -> bool:
        """Whether step inputs ``inp`` (:class:`vlkit.engine.runner.StepInputs`) can replay a graph."""
        n = inp.num_single
        return (
            bool(self.graphs)  # none captured for rotary variants that need per-sequence lengths
            and n > 0
            and not inp.prefills
            and not inp.embeddings
            and inp.seq_total_lens is None
            and inp.input_ids.shape[0] == n
            and n <= self.max_batch
            and inp.single_block_tables.shape[1] <= self.max_blocks
        )

    def size_for(self, n: int) -> int:
        """The captured batch size a step of ``n`` sequences replays."""
        return self.sizes[bisect.bisect_left(self.sizes, n)]

    # -- capture --------------------------------------------------------------------------
    def _step(self, b: int) -> Callable[[], torch.Tensor | None]:
        positions = self.positions[:, :b] if self.mrope else self.positions[:b]

        def run() -> torch.Tensor | None:
            ctx = AttentionContext(
                kv_caches=self.kv_caches, slot_mapping=self.slots[:b], num_single=b,
                single_block_tables=self.block_tables[:b], single_context_lens=self.context_lens[:b],
                backend=self.backend,
            )
            x = self.model.embed_tokens(self.input_ids[:b])
            hidden = self.model(x, positions, ctx)
            return self.model.compute_logits(hidden)

        return run

    @torch.inference_mode()
    def capture(self, max_position: int) -> None:
        """Capture every batch size, largest first (the smaller ones reuse its memory pool).

        ``max_position``: the highest position a sequence may reach; the rotary tables are built
        that far before capture (inside a graph they cannot grow).
        """
        if getattr(self.rotary, "needs_seq_lens", False):  # dynamic NTK / LongRoPE: every step eager
            logger.info("no decode graphs: the model's rotary embedding (%s) needs per-sequence lengths",
                        getattr(self.rotary, "rope_type", "?"))
            return
        t0 = time.perf_counter()
        if self.rotary is not None and hasattr(self.rotary, "_tables"):
            self.rotary._tables(torch.full((1,), max_position, dtype=torch.int64, device=self.device))
        pool = None if self.emulate else torch.cuda.graph_pool_handle()
        for b in reversed(self.sizes):
            fn = self._step(b)
            fn()  # warm-up: compiles the Triton kernels, sets up cuBLAS, outside the capture
            if not self.emulate:  # pragma: no cover - needs CUDA
                torch.cuda.synchronize(self.device)
            graph = EmulatedGraph() if self.emulate else CudaGraph(pool)
            graph.capture(fn)
            self.graphs[b] = graph
        if not self.emulate:  # pragma: no cover - needs CUDA
            torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - t0
        logger.info("captured %s decode graphs (batch %d..%d) in %.1f s", "emulated" if self.emulate else "CUDA",
                    self.sizes[0], self.sizes[-1], self.capture_seconds)

    # -- replay ---------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, inp: Any) -> torch.Tensor | None:
        """Replay the graph for ``inp``; the logits of its ``n`` rows (``None`` off rank 0)."""
        n = inp.num_single
        b = self.size_for(n)
        dev = self.device
        # padding rows n..b keep whatever ids, positions and block tables they last had (valid
        # values, never read for a row of context length 0); only their KV writes must go to the
        # scratch slot and their lengths be 0
        self.input_ids[:n].copy_(inp.input_ids, non_blocking=True)
        pos = inp.positions.to(dev, non_blocking=True)
        if self.mrope:
            self.positions[:, :n].copy_(pos if pos.dim() == 2 else pos.expand(3, -1))
        else:
            self.positions[:n].copy_(pos[0] if pos.dim() == 2 else pos)
        self.slots[:n].copy_(inp.slot_mapping, non_blocking=True)
        self.slots[n:b].fill_(self.scratch_slot)
        w = inp.single_block_tables.shape[1]
        self.block_tables[:n, :w].copy_(inp.single_block_tables, non_blocking=True)
        self.context_lens[:n].copy_(inp.single_context_lens, non_blocking=True)
        self.context_lens[n:b].zero_()
        graph = self.graphs[b]
        graph.replay()
        self.replays[b] = self.replays.get(b, 0) + 1
        return None if graph.output is None else graph.output[:n]
