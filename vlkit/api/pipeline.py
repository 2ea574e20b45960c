"""The pipeline: ``vlkit.pipeline(model, ...)`` and what it returns.

One :class:`Pipeline` owns the engine (language model), the family's VisionModel (through an
:class:`~vlkit.api.image_encoder.ImageEncoder`) and ChatTemplateWrapper, and one
:class:`~vlkit.api.loop.EngineLoop` that every call consumes.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from vlkit.api.fetch import MediaPolicy
from vlkit.api.outputs import Response, Session, error_response, to_response
from vlkit.api.prepare import Preparer, RequestError
from vlkit.config import ChatTemplateConfig, EngineConfig, GenerationConfig, VisionConfig
from vlkit.contract.messages import Conversation, Message, TextPart, split_batch
from vlkit.engine.request import Request

__all__ = ["Pipeline", "RequestError", "Response", "Session", "pipeline"]

logger = logging.getLogger("vlkit")


class Pipeline:
    """Use :func:`pipeline` to create one."""

    def __init__(
        self,
        model: str | Path,
        engine_config: EngineConfig | None = None,
        vision_config: VisionConfig | None = None,
        chat_template_config: ChatTemplateConfig | None = None,
        log_level: str | int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from vlkit.contract.registry import get_registry, read_config, resolve_model_path

        if log_level is not None:
            logging.getLogger("vlkit").setLevel(log_level)
        self.engine_config = engine_config or EngineConfig()
        self.vision_config = vision_config or VisionConfig()
        self.chat_template_config = chat_template_config or ChatTemplateConfig()
        self.model_path = resolve_model_path(model, revision=revision)
        self.hf_config = read_config(self.model_path)
        self.engine: Any = None
        self._loop: Any = None
        self.image_encoder: Any = None
        self.vision: Any = None
        parts = get_registry().build(self.model_path, self.hf_config, self.chat_template_config,
                                     trust_remote_code=trust_remote_code)
        self.family = parts.family
        self.tokenizer = parts.tokenizer
        self.chat_template = parts.chat_template
        self._start_engine(parts.spec)
        try:
            if parts.vision is not None:
                self._loop.call(self._build_vision, parts.vision)
        except BaseException:
            self.close()  # no tensor-parallel worker outlives a failed start
            raise
        self._prep = Preparer(self.tokenizer, self.chat_template, self.vision, self.image_encoder, self._loop.call,
                              self.engine.session_len, self.model_path)

    # -- construction ----------------------------------------------------------------------
    def _start_engine(self, spec: Any) -> None:
        from vlkit.api.loop import EngineLoop
        from vlkit.engine import LLMEngine

        stop_ids = self.chat_template.stop_token_ids() if self.chat_template is not None else []
        self._loop = EngineLoop()
        try:  # built on the loop thread, which does all torch work (see vlkit/api/loop.py)
            self.engine = self._loop.engine = self._loop.call(
                LLMEngine, spec, self.engine_config, tokenizer=self.tokenizer, stop_token_ids=stop_ids
            )
        except BaseException:
            self._loop.close()
            self._loop = None
            raise

    def _build_vision(self, vision: Any) -> None:
        import torch

        from vlkit.api.image_encoder import ImageEncoder

        vision.to(self.engine.device, self.engine.dtype)
        vision.preprocessor = vision.build_preprocessor()
        vision.model = vision.build_model()
        if self.engine.device.type == "cpu" and self.engine.dtype in (torch.float32, torch.bfloat16):
            from vlkit.layers.linear import prepack_nn_linears

            # oneDNN's blocked GEMM: about 2x MKL in fp32, 1.2-3x plain bf16 (vlkit/layers/linear.py)
            prepack_nn_linears(vision.model, dtypes=(self.engine.dtype,))
        self.vision = vision
        self.image_encoder = ImageEncoder(vision, self.vision_config)

    # -- preparing requests ------------------------------------------------------------------
    def prepare_inputs(self, prompt: Any) -> dict[str, Any]:
        """Tokens and image embeddings for one prompt, as the engine will receive them.

        :return: lmdeploy's form, ``{"prompt", "input_ids", "input_embeddings",
            "input_embedding_ranges"}`` (plus ``"mrope_positions"`` and ``"mrope_position_delta"``
            for families with 3-D rotary positions): one embedding entry per span of prompt
            positions an image fills.
        """
        (req,) = self._prep.prepare([prompt])
        if isinstance(req, BaseException):
            raise req
        out = {
            "prompt": req.prompt,
            "input_ids": req.prompt_token_ids,
            "input_embeddings": req.input_embeddings,
            "input_embedding_ranges": req.embedding_ranges,
        }
        if req.mrope_positions is not None:
            out["mrope_positions"], out["mrope_position_delta"] = req.mrope_positions, req.mrope_position_delta
        return out

    def get_logits(self, inputs: dict[str, Any] | Any) -> Any:
        """Prompt logits ``[len(input_ids), vocab]`` for :meth:`prepare_inputs` output (or a prompt)."""
        if not isinstance(inputs, dict) or "input_ids" not in inputs:
            inputs = self.prepare_inputs(inputs)
        return self._loop.call(
            self.engine.get_logits,
            inputs["input_ids"],
            input_embeddings=inputs.get("input_embeddings") or None,
            embedding_ranges=inputs.get("input_embedding_ranges") or None,
            mrope_positions=inputs.get("mrope_positions"),
        )

    # -- running -----------------------------------------------------------------------------
    def _gen_configs(self, gen_config: Any, n: int) -> list[GenerationConfig]:
        if gen_config is None:
            return [GenerationConfig()] * n
        if isinstance(gen_config, list):
            if len(gen_config) != n:
                raise ValueError(f"got {len(gen_config)} GenerationConfigs for {n} prompts")
            return gen_config
        return [gen_config] * n

    def _run(self, reqs: list[Request | BaseException], gens: list[GenerationConfig],
             raise_submit: bool = False) -> Iterator[tuple[int, Any, BaseException | None]]:
        """Submit every request and yield ``(index, output, None)`` for each engine output and
        ``(index, None, error)`` for a request that failed (before or while running). Requests
        still running when the consumer stops are aborted."""
        q: queue.Queue[tuple[int, Any, BaseException | None]] = queue.Queue()
        live: dict[int, str] = {}
        for i, req in enumerate(reqs):
            if isinstance(req, BaseException):
                q.put((i, None, req))
                continue
            req.gen_config = gens[i]
            try:
                live[i] = self._loop.submit(req, lambda out, err, i=i: q.put((i, out, err)))
            except Exception as exc:  # noqa: BLE001
                if raise_submit:
                    raise
                q.put((i, None, exc))
        remaining = len(reqs)
        try:
            while remaining:
                i, out, err = q.get()
                if err is not None or out.finished:
                    remaining -= 1
                    live.pop(i, None)
                yield i, out, err
        finally:
            for rid in live.values():
                self._loop.abort(rid)

    def stream_infer(
        self, prompts: Any, gen_config: GenerationConfig | list[GenerationConfig] | None = None, **kwargs: Any
    ) -> Iterator[Response]:
        """Yield :class:`Response` increments (new text and tokens) as they are generated.

        Each carries ``index``, the position of its prompt; the last one of a prompt has its
        ``finish_reason``. A bad request yields one ``finish_reason="error"`` response.
        """
        prompt_list, _ = split_batch(prompts)
        gens = self._gen_configs(gen_config, len(prompt_list))
        reqs = self._prep.prepare(prompt_list)
        for i, out, err in self._run(reqs, gens):
            if err is not None:
                yield error_response(i, err, _prompt_len(reqs[i]))
            else:
                yield to_response(out, i, increment=True)

    def infer(
        self,
        prompts: Any,
        gen_config: GenerationConfig | list[GenerationConfig] | None = None,
        use_tqdm: bool | None = None,
    ) -> Response | list[Response]:
        """Run prompts to completion. One prompt -> :class:`Response` (raises on bad input);
        a list -> list of Responses (a bad request gets ``finish_reason="error"``, the rest run)."""
        prompt_list, is_batch = split_batch(prompts)
        gens = self._gen_configs(gen_config, len(prompt_list))
        reqs = self._prep.prepare(prompt_list)
        if not is_batch and isinstance(reqs[0], BaseException):
            raise reqs[0]
        results: list[Response | None] = [None] * len(reqs)
        show = use_tqdm if use_tqdm is not None else (is_batch and len(prompt_list) > 1)
        bar = _progress(sum(not isinstance(r, BaseException) for r in reqs), show)
        try:
            for i, out, err in self._run(reqs, gens, raise_submit=not is_batch):
                if err is not None:
                    if not is_batch:
                        raise RuntimeError(f"generation failed: {err}") from err
                    results[i] = error_response(i, err, _prompt_len(reqs[i]))
                elif out.finished:
                    results[i] = to_response(out, i, increment=False)
                else:
                    continue
                if not isinstance(reqs[i], BaseException):
                    bar.update(1)
        finally:
            bar.close()
        return results if is_batch else results[0]  # type: ignore[return-value]

    __call__ = infer

    async def generate(self, prompt: Any, gen_config: GenerationConfig | None = None,
                       media_policy: MediaPolicy | None = None) -> AsyncIterator[Response]:
        """Async streaming of one prompt (the server uses this).

        Preparation (image fetching, decoding and preprocessing) runs in worker threads, off the
        step loop; increments arrive from the step loop. Leaving the iterator early (a client
        that went away, a cancelled task) aborts the request, which frees its KV blocks at once.

        :param media_policy: where this request's images may come from and how many it may
            bring (a server passes :meth:`MediaPolicy.server`); default: the pipeline's own.
        :raises ValueError: (a subclass) for a bad request, before anything is generated.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        (req,) = await loop.run_in_executor(None, self._prep.prepare, [prompt], media_policy)
        if isinstance(req, BaseException):
            raise req
        q: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()

        def deliver(out: Any, err: BaseException | None) -> None:
            loop.call_soon_threadsafe(q.put_nowait, (out, err))

        req.gen_config = gen_config or GenerationConfig()
        rid = self._loop.submit(req, deliver)
        done = False
        try:
            while not done:
                out, err = await q.get()
                if err is not None:
                    done = True
                    raise RuntimeError(f"generation failed: {err}") from err
                done = out.finished
                yield to_response(out, increment=True)
        finally:
            if not done and self._loop is not None:
                self._loop.abort(rid)

    def chat(
        self, prompt: Any, session: Session | None = None, gen_config: GenerationConfig | None = None, **kwargs: Any
    ) -> Session:
        """One chat turn. The next turn (pass the returned session back) reuses the prefix cache
        for the earlier turns and the image-feature cache for their images."""
        session = session or Session()
        turn = self._prep.conversation(prompt, "prompt")
        conv = session.history.extend(turn)
        resp = self.infer(conv, gen_config=gen_config, use_tqdm=False)
        assert isinstance(resp, Response)
        session.history = conv.extend(Conversation([Message("assistant", [TextPart(resp.text)])], []))
        session.response = resp
        return session

    # -- lifetime ----------------------------------------------------------------------------
    def failure(self) -> str | None:
        """Why this pipeline can no longer serve (the step loop died, a tensor-parallel worker
        exited, it was closed), or ``None`` while it can. Cheap: a server's ``/health`` calls it."""
        if self._loop is None or self.engine is None:
            return "the pipeline is closed"
        problem = self._loop.failure()
        if problem is not None:
            return problem
        try:
            self.engine.check_workers()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return f"{type(exc).__name__}: {exc}"
        return None

    def close(self) -> None:
        """Stop the step loop and the engine (and its tensor-parallel workers)."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.image_encoder is not None:
            self.image_encoder.close()
        if self.vision is not None:
            self.vision.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real API
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _prompt_len(req: Any) -> int:
    return len(req.prompt_token_ids) if isinstance(req, Request) else 0


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, show: bool) -> Any:
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="vlkit", unit="req")


def pipeline(
    model: str | Path,
    engine_config: EngineConfig | None = None,
    vision_config: VisionConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    log_level: str | int | None = None,
    backend_config: EngineConfig | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> Pipeline:
    """Create a :class:`Pipeline` for a local checkpoint directory or a hub id.

    ``backend_config`` is another name for ``engine_config`` (lmdeploy's). ``revision``: the
    branch, tag or commit of a hub id (only the files a checkpoint needs are downloaded;
    ``HF_HUB_OFFLINE=1`` uses the local cache only). ``trust_remote_code``: let code shipped
    with the checkpoint run (for a tokenizer no plugin reads itself); off by default, and vlkit
    never asks on the terminal.
    """
    if kwargs:
        raise TypeError(f"pipeline() got unexpected arguments: {sorted(kwargs)}")
    if backend_config is not None:
        if engine_config is not None:
            raise TypeError("give engine_config or backend_config, not both")
        engine_config = backend_config
    return Pipeline(model, engine_config, vision_config, chat_template_config, log_level, revision,
                    trust_remote_code)
