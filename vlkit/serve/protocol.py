"""The OpenAI request and response bodies as pydantic models, and the request -> GenerationConfig map.

Requests are parsed by :func:`parse_body` (size- and depth-safe JSON) and validated in strict
mode: ``"stream": "false"`` is an error, not a truthy string; NaN and infinite numbers, seeds
outside int64, a ``stream_options`` that is not an object, ``n`` other than 1 and features vlkit
does not implement (``tools``, ``response_format`` other than text) are 400s naming the field.
The same models give ``/openapi.json`` its request and response schemas.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlkit.config import GenerationConfig
from vlkit.serve.errors import APIError, bad_request

INT64 = 2**63 - 1
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def sanitize(message: str) -> str:
    """An error message without heap addresses (``<object at 0x7f...>``)."""
    return _ADDRESS.sub("", message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class ContentPart(_Strict):
    type: str
    text: str | None = None
    image_url: ImageURL | str | None = None
    video_url: ImageURL | str | None = None  # vLLM's video part: {"url": ..., "fps"/"num_frames"...}


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=-INT64 - 1, le=INT64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    ignore_eos: bool = False
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (text only)."""

    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoiceMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatChoiceMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


#: request fields vlkit does not implement: a 400 rather than a silent 200
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "audio", "modalities",
               "prediction", "logit_bias")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; 400 for invalid, too deeply nested or non-object JSON."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise bad_request("request body is nested too deeply") from None
    except ValueError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def validate(model: type[_Sampling], body: dict[str, Any]) -> Any:
    """``model`` validated from ``body``; a 400 naming the first bad field."""
    for name in UNSUPPORTED:
        if body.get(name) not in (None, [], {}):
            raise bad_request(f"'{name}' is not supported by this server", name)
    if model is ChatCompletionRequest and (not isinstance(body.get("messages"), list) or not body["messages"]):
        raise bad_request("'messages' must be a non-empty list", "messages")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad_request("'response_format' other than {\"type\": \"text\"} is not supported", "response_format")
    try:
        return model.model_validate(body)
    except RecursionError:
        raise bad_request("request body is nested too deeply") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _param(err.get("loc", ()))
        raise bad_request(sanitize(f"'{where or 'body'}': {err.get('msg', 'invalid value')}"), where) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def _param(loc: tuple[Any, ...]) -> str | None:
    """pydantic's error location as OpenAI writes a param: ``messages[0].role`` (union member
    tags such as ``str`` or ``list[ContentPart]`` left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part.lower() not in _TYPE_TAGS and not part[0].isupper():
            out += f".{part}" if out else part
    return out or None


def generation_config(req: _Sampling, default_max_tokens: int | None = None) -> GenerationConfig:
    """OpenAI request fields -> :class:`GenerationConfig` (``max_completion_tokens: 0`` means 0)."""
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = default_max_tokens
    temperature = 1.0 if req.temperature is None else req.temperature
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    logprobs: int | None = None
    if isinstance(req, ChatCompletionRequest):
        if req.logprobs:
            logprobs = max(req.top_logprobs or 0, 1)
    elif isinstance(req, CompletionRequest):
        logprobs = req.logprobs
    try:
        return GenerationConfig(
            **({} if max_tokens is None else {"max_new_tokens": max_tokens}),
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=req.top_p if req.top_p not in (None, 0) else 1.0,
            top_k=req.top_k or 0,
            min_p=req.min_p or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            random_seed=req.seed,
            stop_words=stop,
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
        )
    except ValueError as exc:
        raise APIError(400, sanitize(str(exc))) from None
