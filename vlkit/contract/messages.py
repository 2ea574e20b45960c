"""Every accepted prompt form, turned into one internal :class:`Conversation`.

Accepted forms (those of lmdeploy's VLM pipeline):

* ``"text"`` — one user turn;
* ``(prompt, image)`` / ``(prompt, [images])`` — one user turn with images; without
  ``IMAGE_TOKEN`` in the prompt the images come before the text, with it each
  ``IMAGE_TOKEN`` marks where the next image goes;
* OpenAI chat messages: ``[{"role": ..., "content": str | [parts]}]`` with parts
  ``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url": ..., **extras}}``
  (http(s) URL, ``data:`` URI, local path or ``file://``) and ``{"type": "image", "image": PIL}``;
  extras such as ``max_dynamic_patch`` or ``max_pixels`` are passed to the family per image.

A batch is a list of any of these (see :func:`split_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGE_TOKEN = "<IMAGE_TOKEN>"

ROLES = ("system", "user", "assistant")


class MessageError(ValueError):
    """A malformed prompt; the message names the offending field."""


@dataclass
class ImageRef:
    """An image of a conversation: where it comes from and the family options given with it."""

    source: Any  # PIL.Image, bytes, path, URL or data: URI
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextPart:
    text: str
    type: str = "text"


@dataclass
class ImagePart:
    index: int  # into Conversation.images
    placed: bool = False  # True when the user put it there with IMAGE_TOKEN
    type: str = "image"


@dataclass
class Message:
    role: str
    parts: list[TextPart | ImagePart]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    def to_template(self) -> dict[str, Any]:
        """The HF chat-template form: ``{"role", "content": [{"type": "text"|"image"}...]}``."""
        content: list[dict[str, Any]] = []
        for p in self.parts:
            if isinstance(p, TextPart):
                content.append({"type": "text", "text": p.text})
            else:
                content.append({"type": "image", "index": p.index, "placed": p.placed})
        return {"role": self.role, "content": content}


class RawText(str):
    """A prompt given to the model exactly as written: no chat template (``/v1/completions``)."""


@dataclass
class Conversation:
    messages: list[Message]
    images: list[ImageRef]
    raw: bool = False  # render as the tokenizer encodes the text, without the chat template

    @property
    def num_images(self) -> int:
        return len(self.images)

    def to_template(self) -> list[dict[str, Any]]:
        return [m.to_template() for m in self.messages]

    def extend(self, other: Conversation) -> Conversation:
        """This conversation followed by ``other`` (image indices renumbered)."""
        offset = len(self.images)
        msgs = list(self.messages)
        for m in other.messages:
            parts = [ImagePart(p.index + offset, p.placed) if isinstance(p, ImagePart) else p for p in m.parts]
            msgs.append(Message(m.role, parts))
        return Conversation(msgs, self.images + other.images)


def _split_image_tokens(text: str, start_index: int, n_images: int, where: str) -> list[TextPart | ImagePart]:
    pieces = text.split(IMAGE_TOKEN)
    n_tokens = len(pieces) - 1
    if n_tokens != n_images:
        if n_images > n_tokens:
            raise MessageError(
                f"{where}: {n_images} image(s) given but the text has {n_tokens} {IMAGE_TOKEN} "
                f"marker(s); put one {IMAGE_TOKEN} per image, or none to let the family place them"
            )
        raise MessageError(f"{where}: the text has {n_tokens} {IMAGE_TOKEN} marker(s) but only {n_images} image(s)")
    parts: list[TextPart | ImagePart] = []
    for i, piece in enumerate(pieces):
        if piece:
            parts.append(TextPart(piece))
        if i < n_tokens:
            parts.append(ImagePart(start_index + i, placed=True))
    return parts


def _is_image_like(obj: Any) -> bool:
    if isinstance(obj, (str, bytes, bytearray)):
        return True
    return hasattr(obj, "size") and hasattr(obj, "mode")  # PIL.Image


def from_tuple(prompt: Any, images: Any, where: str = "prompt") -> Conversation:
    if not isinstance(prompt, str):
        raise MessageError(f"{where}[0]: the prompt must be a str, got {type(prompt).__name__}")
    if images is None:
        imgs: list[Any] = []
    elif isinstance(images, (list, tuple)):
        imgs = list(images)
    else:
        imgs = [images]
    refs = []
    for i, img in enumerate(imgs):
        if isinstance(img, dict):  # {"image"/"url": ..., **options}
            src = img.get("image", img.get("url"))
            if src is None:
                raise MessageError(f"{where}[1][{i}]: an image dict needs 'image' or 'url'")
            refs.append(ImageRef(src, {k: v for k, v in img.items() if k not in ("image", "url")}))
        elif img is None or not _is_image_like(img):
            raise MessageError(f"{where}[1][{i}]: not an image (got {type(img).__name__})")
        else:
            refs.append(ImageRef(img))
    if IMAGE_TOKEN in prompt:
        parts = _split_image_tokens(prompt, 0, len(refs), where)
    else:
        parts = [ImagePart(i) for i in range(len(refs))] + [TextPart(prompt)]
    return Conversation([Message("user", parts)], refs)


def from_openai(messages: list[Any], where: str = "messages") -> Conversation:
    images: list[ImageRef] = []
    out: list[Message] = []
    if not messages:
        raise MessageError(f"{where}: empty message list")
    for mi, msg in enumerate(messages):
        w = f"{where}[{mi}]"
        if not isinstance(msg, dict):
            raise MessageError(f"{w}: a message must be a dict with 'role' and 'content', got {type(msg).__name__}")
        role = msg.get("role")
        if role == "developer":  # OpenAI's newer name for the system message
            role = "system"
        if role not in ROLES:
            raise MessageError(f"{w}.role: must be one of {ROLES} (or 'developer'), got {role!r}")
        if "content" not in msg:
            raise MessageError(f"{w}.content: missing")
        content = msg["content"]
        parts: list[TextPart | ImagePart] = []
        if content is None:
            content = ""
        if isinstance(content, str):
            parts = [TextPart(content)] if IMAGE_TOKEN not in content else _split_image_tokens(content, len(images), 0, f"{w}.content")
        elif isinstance(content, list):
            msg_images: list[ImageRef] = []
            raw: list[tuple[str, Any]] = []
            for pi, part in enumerate(content):
                pw = f"{w}.content[{pi}]"
                if not isinstance(part, dict) or "type" not in part:
                    raise MessageError(f"{pw}: a content part must be a dict with a 'type'")
                kind = part["type"]
                if kind == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise MessageError(f"{pw}.text: must be a string")
                    raw.append(("text", text))
                elif kind == "image_url":
                    spec = part.get("image_url")
                    if isinstance(spec, str):
                        spec = {"url": spec}
                    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str) or not spec["url"]:
                        raise MessageError(f"{pw}.image_url.url: missing or not a string")
                    opts = {k: v for k, v in spec.items() if k not in ("url", "detail")}
                    msg_images.append(ImageRef(spec["url"], opts))
                    raw.append(("image", None))
                elif kind == "image":
                    img = part.get("image", part.get("url"))
                    if img is None:
                        raise MessageError(f"{pw}.image: missing")
                    opts = {k: v for k, v in part.items() if k not in ("type", "image", "url")}
                    msg_images.append(ImageRef(img, opts))
                    raw.append(("image", None))
                else:
                    raise MessageError(f"{pw}.type: unsupported content type {kind!r} (use 'text', 'image_url' or 'image')")
            text_all = "".join(t for k, t in raw if k == "text")
            if IMAGE_TOKEN in text_all:
                parts = _split_image_tokens(text_all, len(images), len(msg_images), f"{w}.content")
            else:
                ii = len(images)
                for kind, text in raw:
                    if kind == "text":
                        parts.append(TextPart(text))
                    else:
                        parts.append(ImagePart(ii))
                        ii += 1
            images.extend(msg_images)
        else:
            raise MessageError(f"{w}.content: must be a string or a list of parts, got {type(content).__name__}")
        if role != "user" and any(isinstance(p, ImagePart) for p in parts):
            raise MessageError(f"{w}: images are only accepted in user messages")
        out.append(Message(role, parts))
    return Conversation(out, images)


def to_conversation(prompt: Any, where: str = "prompt") -> Conversation:
    """One prompt in any accepted form -> Conversation."""
    if isinstance(prompt, Conversation):
        return prompt
    if isinstance(prompt, RawText):
        return Conversation([Message("user", [TextPart(str(prompt))])], [], raw=True)
    if isinstance(prompt, str):
        if IMAGE_TOKEN in prompt:
            raise MessageError(f"{where}: the text has {IMAGE_TOKEN} but no image was given")
        return Conversation([Message("user", [TextPart(prompt)])], [])
    if isinstance(prompt, tuple):
        if len(prompt) != 2:
            raise MessageError(f"{where}: a tuple prompt must be (text, image or [images]), got {len(prompt)} items")
        return from_tuple(prompt[0], prompt[1], where)
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        return from_openai(prompt, "messages" if where == "prompt" else where)
    if isinstance(prompt, dict) and "messages" in prompt:
        return from_openai(prompt["messages"], f"{where}.messages")
    raise MessageError(
        f"{where}: unsupported prompt of type {type(prompt).__name__}; give a str, a (text, image) "
        "tuple or a list of OpenAI-style messages"
    )


def is_batch(prompts: Any) -> bool:
    """True when ``prompts`` is a list of prompts rather than one prompt."""
    if not isinstance(prompts, list) or not prompts:
        return False
    if all(isinstance(m, dict) and "role" in m for m in prompts):
        return False  # one conversation
    return True


def split_batch(prompts: Any) -> tuple[list[Any], bool]:
    """``(list_of_prompts, was_batch)``."""
    if is_batch(prompts):
        return list(prompts), True
    return [prompts], False
