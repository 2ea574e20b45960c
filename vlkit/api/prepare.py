"""Preparation: a prompt, in any input form, becomes one typed engine
:class:`~vlkit.engine.sequence.Request`.

``prompt -> Conversation`` (:mod:`vlkit.contract.messages`) ``-> images decoded and preprocessed
-> encoded together, in batches`` (:mod:`vlkit.api.image_encoder`) ``-> the chat template's
token ids and each image's spans`` (:class:`~vlkit.contract.chat.ChatTemplateWrapper`) ``->
Request`` with one embedding entry per span. In a batch each request is prepared alone: a bad
one becomes its exception, the others go on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlkit.api.fetch import MediaPolicy
from vlkit.contract.messages import Conversation, MessageError, to_conversation
from vlkit.engine.request import Request


class RequestError(ValueError):
    """A request that cannot run (bad image, prompt too long...); the message says why."""


class Preparer:
    """Turns prompts into Requests for one pipeline.

    Args:
        tokenizer: the checkpoint's tokenizer (raw prompts of a text checkpoint without template).
        chat_template: the family's wrapper, or ``None``.
        vision: the built VisionModel, or ``None`` for a text checkpoint.
        image_encoder: the pipeline's encoder (feature cache, batching), or ``None``.
        call: runs a function on the engine thread (all torch work happens there).
        session_len: the engine's longest sequence (a family may refuse with its own advice).
        model_path: for messages.
    """

    def __init__(self, tokenizer: Any, chat_template: Any, vision: Any, image_encoder: Any, call: Any,
                 session_len: int, model_path: Path) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.vision = vision
        self.image_encoder = image_encoder
        self.call = call
        self.session_len = session_len
        self.model_path = model_path

    def conversation(self, prompt: Any, where: str = "prompt") -> Conversation:
        conv = to_conversation(prompt, where)
        if conv.num_images and self.image_encoder is None:
            raise MessageError(f"{where}: {self.model_path} is a text-only model; it takes no images")
        if conv.num_videos and getattr(self.vision, "video_input", None) is None:
            family = getattr(getattr(self.vision, "family", None), "name", None) or type(self.vision).__name__
            raise MessageError(f"{where}: the {family!r} family takes no video input; give its frames as images, "
                               "or use a family that takes video (qwen2-vl, qwen2.5-vl, internvl)")
        return conv

    def prepare(self, prompts: list[Any], policy: MediaPolicy | None = None) -> list[Request | BaseException]:
        """One Request (or the exception that stopped it) per prompt. ``policy``: where images
        may come from (default: the image encoder's, which trusts the caller)."""
        convs: list[Conversation | BaseException] = []
        for i, p in enumerate(prompts):
            try:
                convs.append(p if isinstance(p, Conversation) else
                             self.conversation(p, f"prompts[{i}]" if len(prompts) > 1 else "prompt"))
            except Exception as exc:  # noqa: BLE001 - one bad request fails alone
                convs.append(exc)
        return self.prepare_conversations(convs, policy)

    def prepare_conversations(self, convs: list[Conversation | BaseException],
                              policy: MediaPolicy | None = None) -> list[Request | BaseException]:
        """Images of all requests are loaded and preprocessed on the media threads (never on
        the engine thread), then encoded together in batches on the engine thread."""
        staged: list[tuple[Conversation, list[Any]] | BaseException] = []
        for conv in convs:
            if isinstance(conv, BaseException):
                staged.append(conv)
                continue
            try:
                items = self.image_encoder.preprocess(conv.images, policy) if conv.num_images else []
                staged.append((conv, items))
            except Exception as exc:  # noqa: BLE001
                staged.append(exc)
        all_items = [it for s in staged if not isinstance(s, BaseException) for it in s[1]]
        feats = self.call(self.image_encoder.encode, all_items) if all_items else []
        results: list[Request | BaseException] = []
        k = 0
        for s in staged:
            if isinstance(s, BaseException):
                results.append(s)
                continue
            conv, items = s
            embs = feats[k:k + len(items)]
            k += len(items)
            try:
                results.append(self.request(conv, items, embs))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
        return results

    def request(self, conv: Conversation, items: list[Any], embs: list[Any]) -> Request:
        """The Request of one conversation whose images are preprocessed (``items``) and encoded."""
        if self.chat_template is None or conv.raw:  # no template: tokenizer(prompt)
            if len(conv.messages) != 1 or conv.messages[0].role != "user":
                raise MessageError(
                    f"{self.model_path} has no chat template: give a plain string prompt, or choose a "
                    "template with ChatTemplateConfig(model_name=...)"
                )
            text = conv.messages[0].text
            return Request(list(self.tokenizer(text).input_ids), prompt=text)
        enc = self.chat_template.encode(conv, [it.num_tokens for it in items], [it.meta for it in items])
        req = Request(list(enc.input_ids), prompt=enc.prompt)
        if not items:
            return req
        message = self.vision.prompt_too_long(enc.input_ids, items, int(self.session_len))
        if message:  # the family's advice (Qwen2-VL: lower max_pixels)
            raise RequestError(message)
        for item, emb, spans in zip(items, embs, enc.image_spans):
            if sum(e - s for s, e in spans) != emb.shape[0]:
                raise RequestError(f"an image's spans hold {sum(e - s for s, e in spans)} positions for "
                                   f"{emb.shape[0]} embeddings")
            row = 0
            for s, e in spans:
                req.input_embeddings.append(emb[row:row + e - s])
                req.embedding_ranges.append((s, e))
                req.embedding_hashes.append(item.hash)
                row += e - s
        mrope = self.vision.mrope_positions(enc.input_ids, items)
        if mrope is not None:
            req.mrope_positions, req.mrope_position_delta = mrope
        return req
