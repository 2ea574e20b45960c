"""What a pipeline returns: :class:`Response`, :class:`Session`, and the one adapter from the
engine's :class:`~vlkit.engine.outputs.RequestOutput` to a Response.

``__call__``, ``stream_infer`` and the async ``generate`` all go through :func:`to_response`:
a streamed increment carries the engine's ``new_text`` (which holds back text that may be the
start of a stop string, and is cut before it once matched), so joining the increments gives the
final text exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlkit.contract.messages import Conversation

if TYPE_CHECKING:  # pragma: no cover
    from vlkit.engine.outputs import RequestOutput


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
        queue_time: seconds the request waited in the engine's queue before it first ran.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    input_token_len: int = 0
    generate_token_len: int = 0
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None
    index: int = 0
    error: str | None = None
    queue_time: float | None = None


@dataclass
class Session:
    """A multi-turn chat: the conversation so far and the last response."""

    history: Conversation = field(default_factory=lambda: Conversation([], []))
    response: Response | None = None
    session_id: int = 0

    def __str__(self) -> str:
        return self.response.text if self.response else ""


def to_response(out: RequestOutput, index: int = 0, *, increment: bool) -> Response:
    """A :class:`Response` for one engine output: the new text, tokens and logprobs of this step
    (``increment=True``, streaming), or everything so far (the final result)."""
    return Response(
        text=(out.new_text if increment else out.text) or "",
        token_ids=list(out.new_token_ids if increment else out.token_ids),
        input_token_len=out.num_prompt_tokens,
        generate_token_len=len(out.token_ids),
        finish_reason=out.finish_reason if out.finished else None,
        logprobs=out.new_logprobs if increment else out.logprobs,
        index=index,
        queue_time=out.queue_time,
    )


def error_response(index: int, err: BaseException, prompt_len: int = 0) -> Response:
    """A request that failed alone: ``finish_reason="error"`` and the error's text."""
    return Response(text="", finish_reason="error", index=index, input_token_len=prompt_len,
                    error=f"{type(err).__name__}: {err}")
