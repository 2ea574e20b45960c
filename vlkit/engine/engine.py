"""The LLM engine: requests in, tokens out, one continuous-batching step at a time.

Typical use::

    engine = LLMEngine.from_pretrained("path/to/text-checkpoint", EngineConfig())
    outs = engine.generate(["Hello", "The capital of France is"], GenerationConfig(max_new_tokens=16))

or, driving it yourself (what the pipeline's background loop does)::

    engine.add_request("r1", prompt_token_ids, gen_config, input_embeddings=[...],
                       embedding_ranges=[(5, 261)], embedding_hashes=["sha..."])
    while engine.has_unfinished():
        for out in engine.step():          # RequestOutput per request that moved
            ...

``add_request``, ``abort``, ``get_logits`` and ``step`` may be called from different threads:
they share one lock (a call waits for at most the step in progress).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence as Seq
from typing import Any

import torch

from vlkit.config import EngineConfig, GenerationConfig
from vlkit.engine.block_manager import BlockManager
from vlkit.engine.cluster import Topology
from vlkit.engine.detokenizer import IncrementalDetokenizer
from vlkit.engine.kv_cache import num_blocks_for
from vlkit.engine.outputs import RequestOutput
from vlkit.engine.runner import ModelRunner, resolve_device, resolve_dtype
from vlkit.engine.sampling import Sampler, make_generator
from vlkit.engine.scheduler import Scheduler
from vlkit.engine.sequence import Request, ScheduledChunk, Sequence, SequenceStatus
from vlkit.engine.stopping import StopCriteria, checkpoint_eos_ids
from vlkit.models.spec import LanguageModelSpec

logger = logging.getLogger(__name__)


def sliding_window(config: dict[str, Any]) -> int | None:
    """The attention window a text config sets (``sliding_window``, unless ``use_sliding_window``
    is false, as Qwen2 configs say), or None."""
    window = config.get("sliding_window")
    if not window or config.get("use_sliding_window") is False:
        return None
    return int(window)


class LLMEngine:
    """Runs one language model with paged KV cache, continuous batching and prefix caching.

    Args:
        spec: the language model (a family's :class:`LanguageModelSpec`, or
            :func:`vlkit.engine.loader.text_model_spec` for a text checkpoint).
        engine_config: see :class:`vlkit.config.EngineConfig`.
        tokenizer: an HF tokenizer; enables string prompts, ``RequestOutput.text`` and
            ``stop_words``.
        stop_token_ids: ids every request stops on besides the checkpoint's EOS ids (the
            pipeline passes its chat template's, e.g. ``<|im_end|>``); ``ignore_eos`` ignores both.
    """

    def __init__(self, spec: LanguageModelSpec, engine_config: EngineConfig | None = None, tokenizer: Any = None,
                 stop_token_ids: list[int] | None = None):
        cfg = engine_config or EngineConfig()
        self.spec = spec
        self.engine_config = cfg
        self.tokenizer = tokenizer
        device = resolve_device(cfg.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", 0)
        self.device = device
        self.dtype = resolve_dtype(cfg.dtype, device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.vocab_size = int(spec.config.get("vocab_size", 0))
        self.hidden_size = int(spec.config.get("hidden_size", 0))
        max_pos = spec.config.get("max_position_embeddings")
        self.session_len = int(cfg.session_len or max_pos or 4096)
        window = sliding_window(spec.config)
        if window and self.session_len > window:
            # attention here is always full: past the window it would differ from the model's
            if cfg.session_len:
                raise ValueError(
                    f"EngineConfig.session_len={cfg.session_len} exceeds the checkpoint's sliding_window "
                    f"{window}; vlkit has no sliding-window attention, so sequences are limited to the window"
                )
            self.session_len = window
        self.block_size = cfg.block_size
        self._lock = threading.RLock()
        self._closed = False

        topology = None if cfg.nnodes == 1 else Topology(world_size=cfg.tp, nnodes=cfg.nnodes,
                                                         master_addr=cfg.master_addr, master_port=cfg.master_port)
        self._rank_actors: list[Any] = []
        if cfg.tp > 1 and cfg.tp_backend == "ray":
            from vlkit.engine.ray_ranks import start_ranks

            topology, self._rank_actors = start_ranks(cfg.tp, cuda=device.type == "cuda")
        try:
            self.runner = self._runner(spec, cfg, device, topology)
        except BaseException:
            self._stop_rank_actors()
            raise
        try:
            m = self.runner.model
            if cfg.num_blocks is not None:
                num_blocks = cfg.num_blocks
            else:
                most = cfg.max_batch_size * -(-self.session_len // cfg.block_size) + 1
                num_blocks = num_blocks_for(
                    self.runner.free_bytes(), cfg.cache_max_entry_count, m.num_layers,
                    cfg.block_size, m.num_kv_heads, m.head_dim, self.dtype, max_blocks=most,
                )
            self.runner.allocate_kv_cache(num_blocks)
        except Exception:
            self.runner.close()
            self._stop_rank_actors()
            raise
        self.block_manager = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, cfg.max_batch_size, cfg.max_prefill_token_num,
                                   recompute_above=self.runner.longrope_threshold)
        eos = checkpoint_eos_ids(spec.model_path, spec.config, tokenizer) | set(stop_token_ids or ())
        self.stopping = StopCriteria(eos, self.session_len)
        self.sampler = Sampler(self.stopping)
        self._seqs: dict[str, Sequence] = {}
        self._pending: list[RequestOutput] = []

    def _runner(self, spec: LanguageModelSpec, cfg: EngineConfig, device: torch.device, topology: Any) -> ModelRunner:
        return ModelRunner(
            spec,
            device=str(device),
            dtype=self.dtype,
            block_size=cfg.block_size,
            rank=0,
            world_size=cfg.tp,
            num_threads=cfg.num_threads,
            quantization=cfg.quantization,
            quantization_group_size=cfg.quantization_group_size,
            attention_backend=cfg.attention_backend,
            cuda_graph_max_batch=0 if cfg.enforce_eager else min(cfg.max_batch_size, cfg.cuda_graph_max_batch),
            max_model_len=self.session_len,
            topology=topology,
        )

    def _stop_rank_actors(self) -> None:
        if self._rank_actors:
            from vlkit.engine.ray_ranks import stop_ranks

            stop_ranks(self._rank_actors)
            self._rank_actors = []

    @classmethod
    def from_pretrained(
        cls, model_path: str, engine_config: EngineConfig | None = None, *, load_tokenizer: bool = True
    ) -> LLMEngine:
        """An engine for a plain text checkpoint directory, with its HF tokenizer when it has one."""
        from vlkit.engine.loader import text_model_spec

        spec = text_model_spec(model_path)
        tokenizer = None
        if load_tokenizer:
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
            except Exception as e:  # a weights-only directory still runs on token ids
                logger.warning("no tokenizer loaded from %s: %s", model_path, e)
        return cls(spec, engine_config, tokenizer)

    def check_workers(self) -> None:
        """Raise :class:`~vlkit.engine.workers.WorkerDiedError` if a tensor-parallel worker
        process has exited (any thread may call it; with ``tp=1`` it never raises)."""
        workers = getattr(self.runner, "workers", None)
        dead = workers.dead() if workers is not None else []
        if dead:
            from vlkit.engine.workers import WorkerDiedError

            rank, code = dead[0]
            raise WorkerDiedError(f"tensor-parallel worker {rank} exited (code {code})")

    # -- requests -----------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("string prompts need a tokenizer; pass token ids or give the engine a tokenizer")
        return list(self.tokenizer(prompt)["input_ids"])

    def add_request(
        self,
        request_id: str | None,
        prompt_token_ids: list[int] | str,
        gen_config: GenerationConfig | None = None,
        **inputs: Any,
    ) -> str:
        """Queue a request from its parts; returns its id (a new uuid when ``request_id`` is None).

        Args:
            prompt_token_ids: token ids, or a string the tokenizer encodes (``tokenizer(prompt)``).
            gen_config: defaults to ``GenerationConfig()``.
            inputs: the other fields of :class:`~vlkit.engine.sequence.Request`
                (``input_embeddings``, ``embedding_ranges``, ``embedding_hashes``,
                ``mrope_positions``, ``mrope_position_delta``).

        Raises:
            ValueError: see :meth:`add`.
        """
        prompt = prompt_token_ids
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        rid = "" if request_id is None else str(request_id)
        return self.add(Request(ids, gen_config or GenerationConfig(), rid, **inputs))

    def add(self, req: Request) -> str:
        """Queue ``req``; returns its id (a new uuid when ``req.request_id`` is empty).

        Raises:
            ValueError: empty prompt, duplicate id, prompt + ``max_new_tokens`` over
                ``session_len``, a prompt the KV cache can never hold, bad embeddings/positions.
        """
        if not req.request_id:
            req.request_id = uuid.uuid4().hex
        request_id, gen_config, ids = req.request_id, req.gen_config, req.prompt_token_ids
        self._validate(req)
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if request_id in self._seqs:
                raise ValueError(f"request id {request_id!r} is already running")
            gen = make_generator(gen_config.random_seed, self.device) if not gen_config.greedy else None
            seq = Sequence(req, gen)
            if self.tokenizer is not None:
                seq.detokenizer = IncrementalDetokenizer(
                    self.tokenizer, ids, gen_config.skip_special_tokens, gen_config.stop_words
                )
            if gen_config.max_new_tokens == 0:
                self._finish(seq, "length", in_scheduler=False)
                self._pending.append(self._output(seq, [], None))
                return request_id
            self._seqs[request_id] = seq
            self.scheduler.add(seq)
        return request_id

    def _validate(self, req: Request) -> None:
        n = len(req.prompt_token_ids)
        if n == 0:
            raise ValueError(f"request {req.request_id!r}: the prompt is empty")
        if self.vocab_size and (min(req.prompt_token_ids) < 0 or max(req.prompt_token_ids) >= self.vocab_size):
            raise ValueError(f"request {req.request_id!r}: token ids must be in [0, {self.vocab_size})")
        total = n + req.gen_config.max_new_tokens
        if total > self.session_len:
            raise ValueError(
                f"request {req.request_id!r}: prompt of {n} tokens + max_new_tokens "
                f"{req.gen_config.max_new_tokens} = {total} exceeds session_len {self.session_len}"
            )
        need = -(-(n + 1) // self.block_size)
        if need > self.block_manager.num_total_blocks:
            raise ValueError(
                f"request {req.request_id!r}: prompt of {n} tokens needs {need} KV-cache blocks of "
                f"{self.block_size} tokens but the cache has only {self.block_manager.num_total_blocks}; "
                "raise EngineConfig.num_blocks / cache_max_entry_count or shorten the prompt"
            )
        embs, ranges = req.input_embeddings, req.embedding_ranges
        if len(embs) != len(ranges):
            raise ValueError(f"{len(embs)} input_embeddings but {len(ranges)} embedding_ranges")
        if req.embedding_hashes and len(req.embedding_hashes) != len(embs):
            raise ValueError(f"{len(embs)} input_embeddings but {len(req.embedding_hashes)} embedding_hashes")
        for emb, (s, e) in zip(embs, ranges):
            if not 0 <= s <= e <= n:
                raise ValueError(f"embedding range ({s}, {e}) is outside the prompt of {n} tokens")
            if emb.dim() != 2 or emb.shape[0] != e - s or (self.hidden_size and emb.shape[1] != self.hidden_size):
                raise ValueError(
                    f"embedding for range ({s}, {e}) has shape {tuple(emb.shape)}, "
                    f"expected ({e - s}, {self.hidden_size})"
                )
        if req.mrope_positions is not None and tuple(req.mrope_positions.shape) != (3, n):
            raise ValueError(f"mrope_positions has shape {tuple(req.mrope_positions.shape)}, expected (3, {n})")

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; the next ``step`` reports it with
        ``finish_reason="abort"``. Returns False when no such request is unfinished."""
        with self._lock:
            seq = self._seqs.get(request_id)
            if seq is None:
                return False
            self._finish(seq, "abort")
            self._pending.append(self._output(seq, [], None))
            return True

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._seqs) or bool(self._pending)

    # -- stepping -----------------------------------------------------------------------------
    def _finish(self, seq: Sequence, reason: str, in_scheduler: bool = True) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if in_scheduler:
            self.scheduler.remove(seq)
        self._seqs.pop(seq.request_id, None)

    def _output(self, seq: Sequence, new_ids: list[int], new_lp: list | None) -> RequestOutput:
        det = seq.detokenizer
        text = new_text = None
        if det is not None:
            new_text = det.take_new_text(seq.is_finished)
            text = det.text
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=new_ids,
            token_ids=list(seq.output_token_ids),
            num_prompt_tokens=seq.prompt_len,
            num_cached_tokens=seq.num_cached_tokens,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            text=text,
            new_text=new_text,
            logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
            new_logprobs=new_lp if seq.logprobs is not None else None,
            queue_time=seq.queue_time,
        )

    def step(self) -> list[RequestOutput]:
        """Run one scheduling step; return a :class:`RequestOutput` per request that moved
        (got a token, finished or was aborted since the last step)."""
        with self._lock:
            outputs, self._pending = self._pending, []
            chunks, dropped = self.scheduler.schedule()
            for seq in dropped:
                self._finish(seq, "length", in_scheduler=False)
                outputs.append(self._output(seq, [], None))
            if not chunks:
                return outputs
            try:
                inputs, sample_seqs = self.runner.prepare(chunks, zero_blocks=self.block_manager.take_pending_zero())
                logits = self.runner.execute(inputs)
            except BaseException:
                self.block_manager.forget_scheduled()  # blocks keyed for this step never got their values
                raise
            self.scheduler.finish_step(chunks)
            if not sample_seqs:
                return outputs
            result = self.sampler(logits, sample_seqs)
            for seq, token, lp in zip(sample_seqs, result.token_ids, result.logprobs):
                seq.token_ids.append(token)
                new_lp = None
                if seq.logprobs is not None:
                    seq.logprobs.append(lp)
                    new_lp = [lp]
                reason = self.stopping.reason(seq, token)
                if reason is not None:
                    self._finish(seq, reason)
                outputs.append(self._output(seq, [token], new_lp))
            return outputs

    # -- conveniences -------------------------------------------------------------------------
    def generate(
        self,
        prompts: str | list[int] | Seq[str | list[int]],
        gen_config: GenerationConfig | Seq[GenerationConfig] | None = None,
    ) -> list[RequestOutput] | RequestOutput:
        """Run prompts to completion; the final :class:`RequestOutput` of each, in order.

        ``prompts`` is a string, a list of token ids, or a list of either (a single prompt
        gives a single output). Drives :meth:`step` itself: don't use it while another thread
        runs the step loop.
        """
        single = isinstance(prompts, str) or (
            isinstance(prompts, (list, tuple)) and len(prompts) > 0 and isinstance(prompts[0], int)
        )
        plist = [prompts] if single else list(prompts)
        if gen_config is None or isinstance(gen_config, GenerationConfig):
            cfgs = [gen_config or GenerationConfig()] * len(plist)
        else:
            cfgs = list(gen_config)
            if len(cfgs) != len(plist):
                raise ValueError(f"{len(plist)} prompts but {len(cfgs)} generation configs")
        ids = []
        try:
            for p, c in zip(plist, cfgs):
                ids.append(self.add_request(None, p, c))
            wanted, final = set(ids), {}
            while len(final) < len(ids):
                outs = self.step()
                for o in outs:
                    if o.finished and o.request_id in wanted:
                        final[o.request_id] = o
                if not outs and not self.has_unfinished():
                    raise RuntimeError("engine stopped with requests unfinished")
        except BaseException:
            for i in ids:
                self.abort(i)
            raise
        res = [final[i] for i in ids]
        return res[0] if single else res

    @torch.inference_mode()
    def get_logits(
        self,
        prompt_token_ids: list[int],
        input_embeddings: list[torch.Tensor] | None = None,
        embedding_ranges: list[tuple[int, int]] | None = None,
        mrope_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[L, vocab]`` (fp32, CPU) of every prompt position, in one prefill."""
        req = Request(list(prompt_token_ids), GenerationConfig(max_new_tokens=0), "get_logits",
                      list(input_embeddings or []), list(embedding_ranges or []), [], mrope_positions)
        self._validate(req)
        with self._lock:
            seq = Sequence(req)
            n = len(req.prompt_token_ids)
            bm = self.block_manager
            need = bm.blocks_for(n)
            if need > bm.num_free_blocks:
                raise RuntimeError(f"get_logits needs {need} free KV blocks, {bm.num_free_blocks} are free now")
            seq.block_table = bm.allocate_raw(need)
            try:
                inputs, _ = self.runner.prepare(
                    [ScheduledChunk(seq, n, True)], all_logits=True, zero_blocks=bm.take_pending_zero()
                )
                logits = self.runner.execute(inputs)
            finally:
                bm.free_raw(seq.block_table)
                seq.block_table = []
        return logits.cpu()

    def stats(self) -> dict[str, int]:
        """Block-manager counters plus queue sizes and preemptions."""
        with self._lock:
            s = self.block_manager.stats()
            s.update(
                num_running=len(self.scheduler.running),
                num_waiting=len(self.scheduler.waiting),
                num_preemptions=self.scheduler.num_preemptions,
                num_rope_recomputes=self.scheduler.num_rope_recomputes,
            )
            return s

    def close(self) -> None:
        """Stop tensor-parallel workers and drop the KV cache (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for rid in list(self._seqs):
                self.abort(rid)
            self.runner.close()
            self.runner.kv_caches = []
            self._stop_rank_actors()

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
