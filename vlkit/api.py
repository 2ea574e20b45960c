"""The pipeline: ``vlkit.pipeline(model, ...)`` and what it returns.

One :class:`Pipeline` owns the engine (language model), the family's VisionModel (through an
:class:`~vlkit.image_encoder.ImageEncoder`) and ChatTemplateWrapper, and one
:class:`~vlkit.loop.EngineLoop` that every call consumes.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlkit.config import ChatTemplateConfig, EngineConfig, GenerationConfig, VisionConfig
from vlkit.messages import Conversation, Message, MessageError, TextPart, split_batch, to_conversation

logger = logging.getLogger("vlkit")


class RequestError(ValueError):
    """A request that cannot run (bad image, prompt too long...); the message says why."""


@dataclass
class Response:
    """The result of one prompt (or, from ``stream_infer``, one increment of it).

    Args:
        text: generated text (a streamed increment: the new text only).
        token_ids: generated token ids (streamed: the new ones).
        input_token_len: prompt length in tokens.
        generate_token_len: tokens generated so far.
        finish_reason: ``"stop"``, ``"length"``, ``"error"``, ``"abort"``; ``None`` while streaming.
        logprobs: per generated token, ``{token_id: logprob}`` of the top-N, when asked.
        index: position of the prompt in the batch.
        error: what went wrong, when ``finish_reason == "error"``.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    input_token_len: int = 0
    generate_token_len: int = 0
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None
    index: int = 0
    error: str | None = None


@dataclass
class Session:
    """A multi-turn chat: the conversation so far and the last response."""

    history: Conversation = field(default_factory=lambda: Conversation([], []))
    response: Response | None = None
    session_id: int = 0

    def __str__(self) -> str:
        return self.response.text if self.response else ""


@dataclass
class PreparedRequest:
    prompt: str
    input_ids: list[int]
    embeddings: list[Any]
    ranges: list[tuple[int, int]]
    hashes: list[str]
    mrope: tuple[Any, int] | None = None


class Pipeline:
    """Use :func:`pipeline` to create one."""

    def __init__(
        self,
        model: str | Path,
        engine_config: EngineConfig | None = None,
        vision_config: VisionConfig | None = None,
        chat_template_config: ChatTemplateConfig | None = None,
        log_level: str | int | None = None,
    ) -> None:
        from vlkit.registry import find_family, get_registry, read_config, resolve_model_path

        if log_level is not None:
            logging.getLogger("vlkit").setLevel(log_level)
        self.engine_config = engine_config or EngineConfig()
        self.vision_config = vision_config or VisionConfig()
        self.chat_template_config = chat_template_config or ChatTemplateConfig()
        self.model_path = resolve_model_path(model)
        self.hf_config = read_config(self.model_path)
        reg = get_registry()
        hook = reg.pm.hook
        archs = list(self.hf_config.get("architectures") or [])
        self.family = reg.family_for_architectures(archs)
        self.engine: Any = None
        self._loop: Any = None
        self.image_encoder: Any = None
        self.vision: Any = None
        if self.family is None:
            from vlkit.models.backbones import supported_architectures

            if not set(archs) & set(supported_architectures()):
                find_family(self.hf_config)  # raises UnknownArchitectureError with the full listing
            self._init_text()
        else:
            fam = self.family
            tok = hook.vlkit_tokenizer(family=fam, hf_config=self.hf_config, model_path=self.model_path)
            self.tokenizer = tok if tok is not None else _auto_tokenizer(self.model_path)
            spec = hook.vlkit_language_model_spec(family=fam, hf_config=self.hf_config, model_path=self.model_path)
            if spec is None:
                raise ValueError(f"family {fam.name!r} gave no language model description for {self.model_path}")
            self.chat_template = hook.vlkit_chat_template_wrapper(
                family=fam, hf_config=self.hf_config, model_path=self.model_path,
                tokenizer=self.tokenizer, chat_template_config=self.chat_template_config,
            )
            if self.chat_template is None:
                raise ValueError(f"plugin {fam.plugin!r} returned no ChatTemplateWrapper for family {fam.name!r}")
            self._start_engine(spec)
            try:
                self._loop.call(self._init_vision, fam)
            except BaseException:
                self.close()  # no tensor-parallel worker outlives a failed start
                raise

    def _init_vision(self, fam: Any) -> None:
        import torch

        from vlkit.image_encoder import ImageEncoder
        from vlkit.registry import get_registry

        vision = get_registry().pm.hook.vlkit_vision_model(
            family=fam, hf_config=self.hf_config, model_path=self.model_path, vision_config=self.vision_config
        )
        if vision is None:
            raise ValueError(f"plugin {fam.plugin!r} returned no VisionModel for family {fam.name!r}")
        vision.to(self.engine.device, self.engine.dtype)
        vision.preprocessor = vision.build_preprocessor()
        vision.model = vision.build_model()
        if self.engine.device.type == "cpu" and self.engine.dtype == torch.float32:
            from vlkit.layers.linear import prepack_nn_linears

            prepack_nn_linears(vision.model)  # about 2x on CPU fp32 (vlkit/layers/linear.py)
        self.vision = vision
        self.image_encoder = ImageEncoder(vision, self.vision_config)

    # -- construction ----------------------------------------------------------------------
    def _init_text(self) -> None:
        from vlkit.chat import ChatTemplateWrapper, TemplateError, checkpoint_template
        from vlkit.loader import text_model_spec

        self.tokenizer = _auto_tokenizer(self.model_path)
        self.chat_template = None
        cfg = self.chat_template_config
        if cfg.model_name or cfg.chat_template or checkpoint_template(self.model_path) is not None:
            try:
                self.chat_template = ChatTemplateWrapper(None, self.hf_config, self.model_path, self.tokenizer, cfg)
            except TemplateError:
                if cfg.model_name or cfg.chat_template:
                    raise
        self._start_engine(text_model_spec(self.model_path))

    def _start_engine(self, spec: Any) -> None:
        from vlkit.engine import LLMEngine
        from vlkit.loop import EngineLoop

        self._template_stop_ids = self.chat_template.stop_token_ids() if self.chat_template is not None else []
        self._loop = EngineLoop()
        try:  # built on the loop thread, which does all torch work (see vlkit/loop.py)
            self.engine = self._loop.engine = self._loop.call(
                LLMEngine, spec, self.engine_config, tokenizer=self.tokenizer
            )
        except BaseException:
            self._loop.close()
            self._loop = None
            raise

    # -- preparing requests ------------------------------------------------------------------
    def _conversation(self, prompt: Any, where: str) -> Conversation:
        conv = to_conversation(prompt, where)
        if conv.num_images and self.image_encoder is None:
            raise MessageError(f"{where}: {self.model_path} is a text-only model; it takes no images")
        return conv

    def _prepare_batch(self, convs: list[Conversation | BaseException]) -> list[PreparedRequest | BaseException]:
        """Images of all requests are preprocessed, then encoded together in batches."""
        results: list[PreparedRequest | BaseException] = []
        staged: list[tuple[Conversation, list[Any]] | BaseException] = []
        for conv in convs:
            if isinstance(conv, BaseException):
                staged.append(conv)
                continue
            try:
                items = self._loop.call(self.image_encoder.preprocess, conv.images) if conv.num_images else []
                staged.append((conv, items))
            except Exception as exc:  # noqa: BLE001 - one bad request fails alone
                staged.append(exc)
        all_items = [it for s in staged if not isinstance(s, BaseException) for it in s[1]]
        feats = self._loop.call(self.image_encoder.encode, all_items) if all_items else []
        k = 0
        for s in staged:
            if isinstance(s, BaseException):
                results.append(s)
                continue
            conv, items = s
            embs = feats[k:k + len(items)]
            k += len(items)
            try:
                results.append(self._encode_prompt(conv, items, embs))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        return results

    def _encode_prompt(self, conv: Conversation, items: list[Any], embs: list[Any]) -> PreparedRequest:
        if self.chat_template is None or conv.raw:  # no template: tokenizer(prompt)
            if len(conv.messages) != 1 or conv.messages[0].role != "user":
                raise MessageError(
                    f"{self.model_path} has no chat template: give a plain string prompt, or choose a "
                    "template with ChatTemplateConfig(model_name=...)"
                )
            text = conv.messages[0].text
            return PreparedRequest(text, list(self.tokenizer(text).input_ids), [], [], [])
        enc = self.chat_template.encode(conv, [it.num_tokens for it in items], [it.meta for it in items])
        mrope = None
        if items:
            message = self.vision.prompt_too_long(enc.input_ids, items, int(self.engine.session_len))
            if message:  # the family's advice (Qwen2-VL: lower max_pixels)
                raise RequestError(message)
            mrope = self.vision.mrope_positions(enc.input_ids, items)
        return PreparedRequest(enc.prompt, enc.input_ids, list(embs), enc.image_ranges, [it.hash for it in items], mrope)

    def prepare_inputs(self, prompt: Any) -> dict[str, Any]:
        """Tokens and image embeddings for one prompt, as the engine will receive them.

        :return: ``{"prompt", "input_ids", "input_embeddings", "input_embedding_ranges"}`` (plus
            ``"mrope_positions"`` for families with 3-D rotary positions).
        """
        (prep,) = self._prepare_batch([self._conversation(prompt, "prompt")])
        if isinstance(prep, BaseException):
            raise prep
        out = {
            "prompt": prep.prompt,
            "input_ids": prep.input_ids,
            "input_embeddings": prep.embeddings,
            "input_embedding_ranges": prep.ranges,
        }
        if prep.mrope is not None:
            out["mrope_positions"], out["mrope_position_delta"] = prep.mrope
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
    def _with_stop_ids(self, gen: GenerationConfig) -> GenerationConfig:
        """Add the chat template's stop ids (EOS of the checkpoint, ``<|im_end|>``...)."""
        if self.chat_template is None or gen.ignore_eos:
            return gen
        extra = [t for t in self._template_stop_ids if t not in (gen.stop_token_ids or [])]
        return gen.replace(stop_token_ids=list(gen.stop_token_ids or []) + extra) if extra else gen

    def _submit(self, prep: PreparedRequest, gen: GenerationConfig, callback: Any) -> str:
        rid = self._loop.new_id()
        kwargs: dict[str, Any] = {"prompt_token_ids": prep.input_ids, "gen_config": self._with_stop_ids(gen)}
        if prep.embeddings:
            kwargs.update(input_embeddings=prep.embeddings, embedding_ranges=prep.ranges, embedding_hashes=prep.hashes)
        if prep.mrope is not None:
            kwargs.update(mrope_positions=prep.mrope[0], mrope_position_delta=prep.mrope[1])
        self._loop.submit(rid, callback, **kwargs)
        return rid

    def _gen_configs(self, gen_config: Any, n: int) -> list[GenerationConfig]:
        if gen_config is None:
            return [GenerationConfig()] * n
        if isinstance(gen_config, list):
            if len(gen_config) != n:
                raise ValueError(f"got {len(gen_config)} GenerationConfigs for {n} prompts")
            return gen_config
        return [gen_config] * n

    def _prepare_all(self, prompts: list[Any]) -> list[PreparedRequest | BaseException]:
        convs: list[Conversation | BaseException] = []
        for i, p in enumerate(prompts):
            try:
                convs.append(self._conversation(p, f"prompts[{i}]" if len(prompts) > 1 else "prompt"))
            except Exception as exc:  # noqa: BLE001
                convs.append(exc)
        return self._prepare_batch(convs)

    def stream_infer(
        self, prompts: Any, gen_config: GenerationConfig | list[GenerationConfig] | None = None, **kwargs: Any
    ) -> Iterator[Response]:
        """Yield :class:`Response` increments (new text and tokens) as they are generated.

        Each carries ``index``, the position of its prompt; the last one of a prompt has its
        ``finish_reason``. A bad request yields one ``finish_reason="error"`` response.
        """
        prompt_list, _ = split_batch(prompts)
        gens = self._gen_configs(gen_config, len(prompt_list))
        preps = self._prepare_all(prompt_list)
        q: queue.Queue[tuple[int, Any, BaseException | None]] = queue.Queue()
        live: dict[int, str] = {}
        for i, prep in enumerate(preps):
            if isinstance(prep, BaseException):
                q.put((i, None, prep))
                continue
            try:
                live[i] = self._submit(prep, gens[i], lambda out, err, i=i: q.put((i, out, err)))
            except Exception as exc:  # noqa: BLE001
                q.put((i, None, exc))
        remaining = len(preps)
        texts = {i: "" for i in range(len(preps))}
        try:
            while remaining:
                i, out, err = q.get()
                if err is not None:
                    remaining -= 1
                    live.pop(i, None)
                    yield _error_response(i, err, preps[i])
                    continue
                new_text = out.text[len(texts[i]):] if out.text.startswith(texts[i]) else out.text
                texts[i] = out.text
                if out.finished:
                    remaining -= 1
                    live.pop(i, None)
                yield Response(
                    text=new_text,
                    token_ids=list(out.new_token_ids),
                    input_token_len=out.num_prompt_tokens,
                    generate_token_len=len(out.token_ids),
                    finish_reason=out.finish_reason if out.finished else None,
                    logprobs=out.new_logprobs,
                    index=i,
                )
        finally:
            for rid in live.values():
                self._loop.abort(rid)

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
        preps = self._prepare_all(prompt_list)
        if not is_batch and isinstance(preps[0], BaseException):
            raise preps[0]
        results: list[Response | None] = [None] * len(preps)
        q: queue.Queue[tuple[int, Any, BaseException | None]] = queue.Queue()
        live: dict[int, str] = {}
        for i, prep in enumerate(preps):
            if isinstance(prep, BaseException):
                results[i] = _error_response(i, prep, None)
                continue
            try:
                live[i] = self._submit(prep, gens[i], lambda out, err, i=i: q.put((i, out, err)))
            except Exception as exc:  # noqa: BLE001
                if not is_batch:
                    raise
                results[i] = _error_response(i, exc, prep)
        show = use_tqdm if use_tqdm is not None else (is_batch and len(prompt_list) > 1)
        bar = _progress(len(live), show)
        try:
            while live:
                i, out, err = q.get()
                if err is not None:
                    live.pop(i, None)
                    if not is_batch:
                        raise RuntimeError(f"generation failed: {err}") from err
                    results[i] = _error_response(i, err, preps[i])
                    bar.update(1)
                elif out.finished:
                    live.pop(i, None)
                    results[i] = Response(
                        text=out.text,
                        token_ids=list(out.token_ids),
                        input_token_len=out.num_prompt_tokens,
                        generate_token_len=len(out.token_ids),
                        finish_reason=out.finish_reason,
                        logprobs=out.logprobs,
                        index=i,
                    )
                    bar.update(1)
        finally:
            bar.close()
            for rid in live.values():
                self._loop.abort(rid)
        return results if is_batch else results[0]  # type: ignore[return-value]

    __call__ = infer

    async def generate(self, prompt: Any, gen_config: GenerationConfig | None = None) -> AsyncIterator[Response]:
        """Async streaming of one prompt (the server uses this).

        Preparation (image decoding and encoding) runs in a worker thread; increments arrive
        from the step loop. Leaving the iterator early (a client that went away, a cancelled
        task) aborts the request, which frees its KV blocks at once.

        :raises ValueError: (a subclass) for a bad request, before anything is generated.
        """
        import asyncio

        loop = asyncio.get_running_loop()
        (prep,) = await loop.run_in_executor(None, self._prepare_all, [prompt])
        if isinstance(prep, BaseException):
            raise prep
        q: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()

        def deliver(out: Any, err: BaseException | None) -> None:
            loop.call_soon_threadsafe(q.put_nowait, (out, err))

        rid = self._submit(prep, gen_config or GenerationConfig(), deliver)
        done = False
        text = ""
        try:
            while True:
                out, err = await q.get()
                if err is not None:
                    done = True
                    raise RuntimeError(f"generation failed: {err}") from err
                new_text = out.text[len(text):] if out.text.startswith(text) else out.text
                text = out.text
                done = out.finished
                yield Response(
                    text=new_text,
                    token_ids=list(out.new_token_ids),
                    input_token_len=out.num_prompt_tokens,
                    generate_token_len=len(out.token_ids),
                    finish_reason=out.finish_reason if out.finished else None,
                    logprobs=out.new_logprobs,
                )
                if done:
                    return
        finally:
            if not done and self._loop is not None:
                self._loop.abort(rid)

    def chat(
        self, prompt: Any, session: Session | None = None, gen_config: GenerationConfig | None = None, **kwargs: Any
    ) -> Session:
        """One chat turn. The next turn (pass the returned session back) reuses the prefix cache
        for the earlier turns and the image-feature cache for their images."""
        session = session or Session()
        turn = self._conversation(prompt, "prompt")
        conv = session.history.extend(turn)
        resp = self.infer(conv, gen_config=gen_config, use_tqdm=False)
        assert isinstance(resp, Response)
        session.history = conv.extend(Conversation([Message("assistant", [TextPart(resp.text)])], []))
        session.response = resp
        return session

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the step loop and the engine (and its tensor-parallel workers)."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None
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


def _error_response(index: int, err: BaseException, prep: Any) -> Response:
    n = len(prep.input_ids) if isinstance(prep, PreparedRequest) else 0
    return Response(text="", finish_reason="error", index=index, input_token_len=n, error=f"{type(err).__name__}: {err}")


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


def _auto_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def pipeline(
    model: str | Path,
    engine_config: EngineConfig | None = None,
    vision_config: VisionConfig | None = None,
    chat_template_config: ChatTemplateConfig | None = None,
    log_level: str | int | None = None,
    backend_config: EngineConfig | None = None,
    **kwargs: Any,
) -> Pipeline:
    """Create a :class:`Pipeline` for a local checkpoint directory or a hub id.

    ``backend_config`` is another name for ``engine_config`` (lmdeploy's).
    """
    if kwargs:
        raise TypeError(f"pipeline() got unexpected arguments: {sorted(kwargs)}")
    if backend_config is not None:
        if engine_config is not None:
            raise TypeError("give engine_config or backend_config, not both")
        engine_config = backend_config
    return Pipeline(model, engine_config, vision_config, chat_template_config, log_level)
