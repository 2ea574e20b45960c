"""The model runner: one step's flat batch in, logits of the sampling rows out.

:meth:`ModelRunner.prepare` (rank 0) turns the scheduled chunks into :class:`StepInputs`, plain
picklable data: token ids, positions (``[T]`` or ``[3, T]`` when a sequence uses M-RoPE), cache
slots, per-sequence block tables and context lengths, the inputs embeddings that overwrite token
embeddings, and which rows need logits. One-token chunks (decodes) come first so their attention
runs batched. :meth:`ModelRunner.execute` (every rank) runs the backbone on it; under tensor
parallelism rank 0 first sends the inputs to the workers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from vlkit.engine.cuda_graph import DecodeGraphs, emulating
from vlkit.engine.kv_cache import allocate_kv_cache, free_device_bytes
from vlkit.engine.loader import load_backbone
from vlkit.engine.sequence import ScheduledChunk, Sequence
from vlkit.layers.attention import AttentionContext, PrefillChunk, resolve_backend
from vlkit.layers.linear import prepack_linears
from vlkit.models.spec import LanguageModelSpec

logger = logging.getLogger("vlkit.engine")

# Quantized CPU models run entirely in bf16 (see ModelRunner); False keeps fp32 activations and
# casts around each quantized matmul instead (measured slower: docs/benchmarks.md).
QUANT_BF16_MODEL = True

# Most memory the per-step decode KV kept between steps may take (all layers); past it, each
# layer gathers its blocks every step instead.
DECODE_KV_MAX_BYTES = int(os.environ.get("VLKIT_DECODE_KV_MB", "512")) << 20

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, config: dict[str, Any] | None = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return _DTYPES[dtype]


@dataclass
class StepInputs:
    """Everything every rank needs to run one forward (picklable)."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T] or [3, T]
    slot_mapping: torch.Tensor  # [T]
    num_single: int
    single_block_tables: torch.Tensor  # [num_single, max_blocks]
    single_context_lens: torch.Tensor  # [num_single]
    prefills: list[tuple[int, int, int, list[int]]]  # (start, length, context_len, block_table)
    logits_indices: torch.Tensor  # [N] rows of the flat batch whose logits are returned
    embeddings: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (flat offset, [n, hidden])
    zero_blocks: list[int] = field(default_factory=list)  # blocks to zero before use
    # the single-token sequences are last step's, in the same order, each one token further:
    # the decode KV kept from last step can be extended instead of gathered again
    decode_reuse: bool = False
    seq_total_lens: torch.Tensor | None = None  # [T] tokens of each token's sequence (LongRoPE only)


class ModelRunner:
    """Owns the backbone and the KV cache of one rank.

    Args:
        spec: the language model to build.
        device, dtype: where and in what precision (already resolved, or strings).
        block_size: tokens per KV block.
        rank, world_size: tensor-parallel position; rank 0 with ``world_size > 1`` spawns the
            workers itself.
        num_threads: torch CPU threads.
        quantization, quantization_group_size: weight-only quantization of the linear layers and
            LM head (:mod:`vlkit.layers.quant`), applied on every rank after loading. On CPU an
            fp32 ``dtype`` becomes bf16 for the whole language model (``self.dtype``, KV cache
            included): the int kernels only pay with bf16 activations, and casting around each
            quantized matmul in an otherwise fp32 model measured slower (docs/benchmarks.md).
        attention_backend: decode attention (:func:`vlkit.layers.attention.resolve_backend`).
        cuda_graph_max_batch: capture decode graphs up to this batch (0: never;
            :mod:`vlkit.engine.cuda_graph`); only on CUDA (or emulated, for tests) with the
            ``"triton"`` or ``"flash-attn"`` backend.
        max_model_len: longest sequence, which sizes the graphs' block tables and rotary tables.
    """

    def __init__(
        self,
        spec: LanguageModelSpec,
        device: str = "cpu",
        dtype: str = "float32",
        block_size: int = 16,
        rank: int = 0,
        world_size: int = 1,
        num_threads: int | None = None,
        quantization: str | None = None,
        quantization_group_size: int = 128,
        attention_backend: str = "auto",
        cuda_graph_max_batch: int = 0,
        max_model_len: int = 4096,
        topology: Any = None,
    ):
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        from vlkit.engine.loader import read_config
        from vlkit.layers.prequant import parse_config

        try:
            top_config = read_config(spec.model_path)
        except (OSError, ValueError):  # a spec without a config.json on disk: nothing pre-quantized
            top_config = {}
        self.prequant = parse_config(top_config)
        if self.prequant is not None:
            if quantization not in (None, "int4", "int4-asym", self.prequant.name):
                raise ValueError(f"the checkpoint is already quantized ({self.prequant.name}); leave "
                                 f"EngineConfig.quantization unset (got {quantization!r})")
            quantization = self.prequant.name
        self.quantization = quantization
        self.quant_report = None
        if quantization and self.device.type == "cpu" and self.dtype == torch.float32 and QUANT_BF16_MODEL:
            if rank == 0:
                logger.info("quantization %s: the language model runs in bfloat16 (dtype float32 was asked)",
                            quantization)
            self.dtype = torch.bfloat16
        self.block_size = block_size
        self.attention_backend = resolve_backend(attention_backend, self.device, block_size)
        graph_ok = self.attention_backend in ("triton", "flash-attn") and (self.device.type == "cuda" or emulating())
        self.cuda_graph_max_batch = cuda_graph_max_batch if graph_ok else 0
        self.max_model_len = max_model_len
        self.graphs: DecodeGraphs | None = None
        self.rank, self.world_size = rank, world_size
        self.workers = None
        if rank == 0 and world_size > 1:
            from vlkit.engine.workers import TPWorkers

            kwargs = dict(
                spec=spec,
                device=str(self.device),
                dtype=str(self.dtype).replace("torch.", ""),
                block_size=block_size,
                world_size=world_size,
                num_threads=num_threads,
                quantization=quantization,
                quantization_group_size=quantization_group_size,
                attention_backend=self.attention_backend,
                cuda_graph_max_batch=self.cuda_graph_max_batch,
                max_model_len=max_model_len,
            )
            self.workers = TPWorkers(world_size, ModelRunner, {**kwargs, "rank": 0}, topology=topology)
            # each worker gets its own rank through _worker_main -> ModelRunner(rank=...)
        try:
            if self.prequant is not None:
                self.model = self._load_prequantized()
            elif quantization:
                self.model = self._load_quantized(quantization, quantization_group_size)
            else:
                self.model = load_backbone(spec, self.device, self.dtype)
            self.num_prepacked = 0
            if self.device.type == "cpu" and self.dtype in (torch.float32, torch.bfloat16):
                self.num_prepacked = prepack_linears(self.model)
            self.worker_memory = self.workers.wait("loaded") if self.workers else []
        except Exception:
            self.close()
            raise
        self._rotary = getattr(getattr(self.model, "model", None), "rotary_emb", None)
        self.rope_type: str | None = getattr(self._rotary, "rope_type", None)
        # LongRoPE: a sequence longer than this is computed with the long factors
        self.longrope_threshold: int | None = self._rotary.original_max if self.rope_type == "longrope" else None
        self.kv_caches: list[torch.Tensor] = []
        self.num_blocks = 0
        # decode KV kept between steps (see AttentionContext.decode_kv); rank 0 also remembers
        # which sequences it holds (their block-table lists, which preemption replaces, and
        # context lengths)
        self._decode_kv: list[torch.Tensor] | None = None
        self._decode_kv_valid = False
        self._prev_singles: tuple[list, list[int]] = ([], [])

    def _load_prequantized(self):
        """An AWQ / GPTQ checkpoint: its codes, scales and zeros onto vlkit's int4 layers as they
        are (no re-rounding); act-order GPTQ runs dequantized (``vlkit.layers.prequant``)."""
        from vlkit.engine.loader import tensor_shapes
        from vlkit.layers import prequant

        cfg = self.prequant
        compute = torch.bfloat16 if self.device.type == "cpu" else self.dtype
        dense = cfg.desc_act
        if dense:
            logger.warning("%s checkpoint with act-order (desc_act): its layers are dequantized and run dense in %s",
                           cfg.name, self.dtype)
        names: list[str] = []

        def prepare(model) -> None:
            if not dense:
                shapes = tensor_shapes(self.spec.model_path, lambda n: n.endswith(".qweight"))
                quantized = prequant.quantized_modules(model, shapes, self.spec.rename, cfg.method)
                names.extend(prequant.prepare_model(model, cfg, quantized))

        model = load_backbone(self.spec, self.device, compute, prepare=prepare,
                              transform=lambda stream: prequant.translate(stream, cfg, dense=dense))
        self.quant_report = prequant.finalize(model, names, cfg, compute) if names else None
        return self._cast_dense(model)

    def _load_quantized(self, method: str, group_size: int):
        """Load in the checkpoint's own precision (quantization rounds from its values, not from
        a bf16 copy of fp32 weights: fp32 unless every LM tensor is stored in bf16 or fp16, which
        then halves the peak memory of loading), quantize the linears and LM head, then cast
        what stays dense to ``self.dtype``."""
        from vlkit.engine.loader import stored_float_dtypes
        from vlkit.layers.quant import quantize_model

        stored = stored_float_dtypes(self.spec.model_path, lambda n: self.spec.rename(n) is not None)
        load = {"BF16": torch.bfloat16, "F16": torch.float16}.get(next(iter(stored))) if len(stored) == 1 else None
        model = load_backbone(self.spec, self.device, load or torch.float32)
        compute = torch.bfloat16 if self.device.type == "cpu" else self.dtype  # what the int kernels take
        self.quant_report = quantize_model(model, method, group_size, compute_dtype=compute)
        return self._cast_dense(model)

    def _cast_dense(self, model):
        """What stays dense after quantizing, from the loading dtype to ``self.dtype``."""
        from vlkit.layers.rotary import RotaryEmbedding

        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point() and t.numel() and t.dtype != self.dtype:
                    t.data = t.data.to(self.dtype)
            for m in model.modules():
                if isinstance(m, RotaryEmbedding) and m.dtype != self.dtype:  # tables built at init
                    m.dtype = self.dtype
                    m._build(m._cos.shape[0])
        return model

    # -- KV cache -------------------------------------------------------------------------
    def memory_report(self) -> int:
        return free_device_bytes(self.device)

    def free_bytes(self) -> int:
        """Free memory for the KV cache: the smallest over all ranks."""
        return min([self.memory_report(), *self.worker_memory])

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """Allocate ``num_blocks`` usable blocks per layer (plus, with decode graphs, one scratch
        block the padding rows write to), then capture the decode graphs."""
        m = self.model
        extra = 1 if self.cuda_graph_max_batch else 0
        self.kv_caches = allocate_kv_cache(
            m.num_layers, num_blocks + extra, self.block_size, m.num_kv_heads, m.head_dim, self.dtype, self.device
        )
        self.num_blocks = num_blocks
        if self.workers:
            self.workers.send("kv_cache", num_blocks)
        if self.cuda_graph_max_batch:
            self.graphs = DecodeGraphs(self.model, self.kv_caches, self.attention_backend, self.cuda_graph_max_batch,
                                       -(-self.max_model_len // self.block_size), emulate=self.device.type != "cuda")
            self.graphs.capture(self.max_model_len)
        if self.workers:
            self.workers.wait("ready")

    # -- inputs ---------------------------------------------------------------------------
    def prepare(self, chunks: list[ScheduledChunk], all_logits: bool = False, zero_blocks=()) -> tuple[StepInputs, list[Sequence]]:
        """Pack ``chunks`` into one flat batch.

        Returns the inputs and the sequences whose logits rows come back, in row order (with
        ``all_logits`` every token of the single chunk gets a row).
        """
        bs = self.block_size
        order = sorted(chunks, key=lambda c: c.num_tokens != 1)  # single tokens first (stable)
        ids: list[int] = []
        pos_parts: list[torch.Tensor] = []
        slots: list[torch.Tensor] = []
        use_mrope = any(c.seq.mrope_positions is not None for c in order)
        singles_bt: list[list[int]] = []
        singles_len: list[int] = []
        prefills: list[tuple[int, int, int, list[int]]] = []
        embeddings: list[tuple[int, torch.Tensor]] = []
        logit_rows: list[int] = []
        sample_seqs: list[Sequence] = []
        single_slots: list[int] = []
        totals: list[int] | None = [] if self.rope_type == "longrope" else None
        for c in order:
            seq, n = c.seq, c.num_tokens
            if totals is not None:
                totals.extend([seq.num_tokens] * n)
            start, flat = seq.num_computed_tokens, len(ids)
            end = start + n
            ids.extend(seq.token_ids[start:end])
            pos = seq.positions(start, end)
            if use_mrope and pos.dim() == 1:
                pos = pos.expand(3, -1)
            pos_parts.append(pos)
            bt = seq.block_table
            if n == 1:
                single_slots.append(bt[start // bs] * bs + start % bs)
                singles_bt.append(bt)
                singles_len.append(end)
            else:
                p = torch.arange(start, end)
                slots.append(torch.tensor(bt)[p // bs] * bs + p % bs)
                prefills.append((flat, n, end, list(bt)))
            for off, emb in seq.embedding_slices(start, end):
                embeddings.append((flat + off, emb))
            if all_logits:
                logit_rows.extend(range(flat, flat + n))
                sample_seqs.append(seq)
            elif c.samples:
                logit_rows.append(flat + n - 1)
                sample_seqs.append(seq)
        prev_bt, prev_len = self._prev_singles
        reuse = (
            bool(singles_bt)
            and len(prev_bt) == len(singles_bt)
            and all(a is b for a, b in zip(prev_bt, singles_bt))
            and all(a + 1 == b for a, b in zip(prev_len, singles_len))
        )
        self._prev_singles = (singles_bt, singles_len)
        max_blocks = max((len(b) for b in singles_bt), default=0)
        table = torch.zeros(len(singles_bt), max_blocks, dtype=torch.int64)
        for i, b in enumerate(singles_bt):
            table[i, : len(b)] = torch.tensor(b)
        slot_mapping = torch.tensor(single_slots, dtype=torch.int64)
        if slots:
            slot_mapping = torch.cat([slot_mapping, *slots])
        positions = torch.cat(pos_parts, dim=-1) if len(pos_parts) > 1 else pos_parts[0]
        inputs = StepInputs(
            input_ids=torch.tensor(ids, dtype=torch.int64),
            positions=positions.to(torch.int64),
            slot_mapping=slot_mapping,
            num_single=len(singles_bt),
            single_block_tables=table,
            single_context_lens=torch.tensor(singles_len, dtype=torch.int32),
            prefills=prefills,
            logits_indices=torch.tensor(logit_rows, dtype=torch.int64),
            embeddings=embeddings,
            zero_blocks=list(zero_blocks),
            decode_reuse=reuse,
            seq_total_lens=None if totals is None else torch.tensor(totals, dtype=torch.int64),
        )
        return inputs, sample_seqs

    def _decode_context(self, ctx: AttentionContext, inp: StepInputs, reuse: bool) -> bool:
        """Set up the decode KV kept between steps; False when it does not fit the budget."""
        n, bs = inp.num_single, self.block_size
        lens = inp.single_context_lens
        width = int(lens.max())
        cache = self.kv_caches[0]
        kv = self._decode_kv
        if not (reuse and kv is not None and kv[0].shape[1] == n and width <= kv[0].shape[3]):
            cap_blocks = -(-width // bs) + 4  # room for 64 more tokens before the next refill
            shape = (2, n, cache.shape[3], cap_blocks * bs, cache.shape[4])
            nbytes = len(self.kv_caches) * cache.element_size() * 2 * n * cap_blocks * bs * cache.shape[3] * cache.shape[4]
            self._decode_kv = None
            if nbytes > DECODE_KV_MAX_BYTES:
                return False
            kv = self._decode_kv = [torch.empty(shape, dtype=cache.dtype, device=cache.device) for _ in self.kv_caches]
            table = torch.zeros(n, cap_blocks, dtype=torch.int64)
            table[:, : inp.single_block_tables.shape[1]] = inp.single_block_tables
            ctx.decode_block_tables = table.to(self.device)
            ctx.decode_rebuild = True
        else:
            ctx.decode_rebuild = False
        kvh, cap = kv[0].shape[2], kv[0].shape[3]
        ctx.decode_kv = kv
        ctx.decode_width = width
        rows = torch.arange(n * kvh, dtype=torch.int64).view(n, kvh) * cap
        ctx.decode_write_idx = (rows + (lens.to(torch.int64) - 1)[:, None]).flatten().to(self.device)
        return True

    def _context(self, inp: StepInputs, decode_kv_valid: bool = False) -> AttentionContext:
        dev = self.device
        bs = self.block_size
        ctx = AttentionContext(kv_caches=self.kv_caches, slot_mapping=inp.slot_mapping.to(dev),
                               backend=self.attention_backend)
        n = inp.num_single
        if n:
            ctx.num_single = n
            ctx.single_block_tables = inp.single_block_tables.to(dev)
            lens = inp.single_context_lens.to(dev)
            ctx.single_context_lens = lens
            width = inp.single_block_tables.shape[1] * bs
            if self.attention_backend == "sdpa" and self._decode_context(
                ctx, inp, inp.decode_reuse and decode_kv_valid
            ):
                width = ctx.decode_width
            if self.attention_backend == "sdpa":
                # additive mask, made once per step (SDPA would convert a bool one in every layer)
                valid = torch.arange(width, device=dev)[None, :] < lens[:, None]
                ctx.single_mask = torch.zeros(valid.shape, dtype=self.dtype, device=dev).masked_fill_(
                    ~valid, float("-inf")
                )[:, None, None, :]
        for start, length, context_len, bt in inp.prefills:
            mask = None
            if context_len > length:
                q = torch.arange(length, device=dev)[:, None] + (context_len - length)
                mask = torch.arange(context_len, device=dev)[None, :] <= q
            ctx.prefills.append(PrefillChunk(start, length, context_len, torch.tensor(bt, device=dev), mask))
        if inp.seq_total_lens is not None:  # LongRoPE: the factors follow the whole sequence's length
            ctx.seq_lens = inp.seq_total_lens.to(dev)
        elif getattr(self._rotary, "needs_seq_lens", False):
            lens = [int(x) for x in inp.single_context_lens.tolist()] + [p[2] for p in inp.prefills]
            reps = [1] * n + [p[1] for p in inp.prefills]
            ctx.seq_lens = torch.repeat_interleave(torch.tensor(lens), torch.tensor(reps)).to(dev)
        return ctx

    # -- forward --------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, inp: StepInputs) -> torch.Tensor | None:
        """Run one step; logits ``[N, vocab]`` (fp32) on rank 0, ``None`` on workers."""
        if self.workers:
            self.workers.send("step", inp)
        try:
            return self._forward(inp)
        except RuntimeError as e:
            if self.workers:
                from vlkit.engine.workers import WorkerDiedError

                try:
                    self.workers.check_alive()
                except WorkerDiedError:
                    raise
                raise WorkerDiedError(f"tensor-parallel step failed: {e}") from e
            raise

    def _forward(self, inp: StepInputs) -> torch.Tensor | None:
        dev = self.device
        if inp.zero_blocks:
            idx = torch.tensor(inp.zero_blocks, device=dev)
            for c in self.kv_caches:
                c.index_fill_(1, idx, 0)
        valid, self._decode_kv_valid = self._decode_kv_valid, False  # stays False if this step fails
        if self.graphs is not None and self.graphs.can_run(inp):
            logits = self.graphs.run(inp)
            if logits is None or inp.logits_indices.numel() == 0:
                return None
            return logits[inp.logits_indices.to(dev)].float()
        ctx = self._context(inp, valid)
        x = self.model.embed_tokens(inp.input_ids.to(dev))
        for off, emb in inp.embeddings:
            x[off : off + emb.shape[0]] = emb.to(device=dev, dtype=x.dtype)
        hidden = self.model(x, inp.positions.to(dev), ctx)
        self._decode_kv_valid = ctx.decode_kv is not None
        if inp.logits_indices.numel() == 0:
            return None
        logits = self.model.compute_logits(hidden[inp.logits_indices.to(dev)])
        return None if logits is None else logits.float()

    def close(self) -> None:
        if self.workers is not None:
            self.workers.close()
            self.workers = None
