"""What :meth:`vlkit.engine.engine.LLMEngine.step` returns for each request that moved."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestOutput:
    """The state of one request after a step.

    Attributes:
        request_id: the id given to ``add_request``.
        new_token_ids: tokens generated in this step (usually one; none for an abort).
        token_ids: all tokens generated so far (the stop token included when one stopped it).
        num_prompt_tokens: prompt length.
        num_cached_tokens: prompt tokens served from the prefix cache.
        finished: no more outputs will come for this request.
        finish_reason: ``"stop"`` (EOS, stop token or stop word), ``"length"``
            (``max_new_tokens``, ``session_len`` or the KV cache), ``"abort"``; ``None`` while running.
        text: detokenized output so far (``None`` without a tokenizer); cut before a stop word.
        new_text: the part of ``text`` new in this step. Text that might be the start of a
            stop word is held back until it is known not to be.
        logprobs: per generated token, ``{token_id: logprob}`` with the top-N and the chosen
            token (``None`` unless ``GenerationConfig.logprobs`` is set).
        new_logprobs: the entries of ``logprobs`` new in this step.
        queue_time: seconds the request waited in the engine's queue before it was first
            scheduled (``None`` until then).
    """

    request_id: str
    new_token_ids: list[int]
    token_ids: list[int]
    num_prompt_tokens: int
    num_cached_tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None
    text: str | None = None
    new_text: str | None = None
    logprobs: list[dict[int, float]] | None = None
    new_logprobs: list[dict[int, float]] | None = None
    queue_time: float | None = None
