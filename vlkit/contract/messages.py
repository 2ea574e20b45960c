"""Every accepted prompt form, turned into one internal :class:`Conversation`.

Accepted forms (those of lmdeploy's VLM pipeline):

* ``"text"`` — one user turn;
* ``(prompt, image)`` / ``(prompt, [images])`` — one user turn with images; without
  ``IMAGE_TOKEN`` in the prompt the images come before the text, with it each
  ``IMAGE_TOKEN`` marks where the next image goes;
* OpenAI chat messages: ``[{"role": ..., "content": str | [parts]}]`` with parts
  ``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url": ..., **extras}}``
  (http(s) URL, ``data:`` URI, local path or ``file://``) and ``{"type": "image", "image": PIL}``;
  extras such as ``max_dynamic_patch`` or ``max_pixels`` are passed to the family per image;
  videos as ``{"type": "video", "video": <path | URL | data URI | bytes | [PIL frames]>, **options}``
  or vLLM's ``{"type": "video_url", "video_url": {"url": ..., **options}}`` (options: ``fps``,
  ``num_frames``, ``max_pixels``, ``min_pixels``...; a list of frames is taken as given, its
  ``fps`` saying their rate). ``VIDEO_TOKEN`` in the text places a video, as ``IMAGE_TOKEN``
  places an image.

Images and videos share one ordered list of media (:attr:`Conversation.images`, each a
:class:`ImageRef` whose ``kind`` is ``"image"`` or ``"video"``), so every later stage keeps the
order the user gave them in.

A batch is a list of any of these (see :func:`split_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGE_TOKEN = "<IMAGE_TOKEN>"
VIDEO_TOKEN = "<VIDEO_TOKEN>"
MEDIA_TOKENS = {"image": IMAGE_TOKEN, "video": VIDEO_TOKEN}

ROLES = ("system", "user", "assistant")


class MessageError(ValueError):
    """A malformed prompt; the message names the offending field."""


@dataclass
class ImageRef:
    """An image or a video of a conversation: where it comes from and the family options given
    with it. ``kind`` is ``"image"`` or ``"video"``."""

    source: Any  # PIL.Image, bytes, path, URL or data: URI; for a video also a list of PIL frames
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "image"


#: the same thing, named for what it holds
MediaRef = ImageRef


@dataclass
class TextPart:
    text: str
    type: str = "text"


@dataclass
class ImagePart:
    index: int  # into Conversation.images
    placed: bool = False  # True when the user put it there with IMAGE_TOKEN / VIDEO_TOKEN
    type: str = "image"  # or "video"


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
                content.append({"type": p.type, "index": p.index, "placed": p.placed})
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
        """Images and videos: the media the vision model encodes."""
        return len(self.images)

    @property
    def num_videos(self) -> int:
        return sum(1 for r in self.images if r.kind == "video")

    def to_template(self) -> list[dict[str, Any]]:
        return [m.to_template() for m in self.messages]

    def extend(self, other: Conversation) -> Conversation:
        """This conversation followed by ``other`` (image indices renumbered)."""
        offset = len(self.images)
        msgs = list(self.messages)
        for m in other.messages:
            parts = [ImagePart(p.index + offset, p.placed, p.type) if isinstance(p, ImagePart) else p for p in m.parts]
            msgs.append(Message(m.role, parts))
        return Conversation(msgs, self.images + other.images)


def _split_image_tokens(text: str, start_index: int, kinds: list[str] | int, where: str) -> list[TextPart | ImagePart]:
    """``text`` cut at each ``IMAGE_TOKEN`` / ``VIDEO_TOKEN``; the n-th image token takes the
    n-th image of ``kinds`` (the kinds of the media given, in order), the n-th video token the
    n-th video. ``kinds`` may be a count of images."""
    import re

    if isinstance(kinds, int):
        kinds = ["image"] * kinds
    pieces = re.split("(" + re.escape(IMAGE_TOKEN) + "|" + re.escape(VIDEO_TOKEN) + ")", text)
    markers = pieces[1::2]
    for kind, token in MEDIA_TOKENS.items():
        given = [i for i, k in enumerate(kinds) if k == kind]
        n_tokens = markers.count(token)
        if n_tokens != len(given):
            what = "image(s)" if kind == "image" else "video(s)"
            if len(given) > n_tokens:
                raise MessageError(
                    f"{where}: {len(given)} {what} given but the text has {n_tokens} {token} "
                    f"marker(s); put one {token} per {kind}, or none to let the family place them"
                )
            raise MessageError(f"{where}: the text has {n_tokens} {token} marker(s) but only {len(given)} {what}")
    queues = {kind: [start_index + i for i, k in enumerate(kinds) if k == kind] for kind in MEDIA_TOKENS}
    parts: list[TextPart | ImagePart] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece:
                parts.append(TextPart(piece))
            continue
        kind = "image" if piece == IMAGE_TOKEN else "video"
        parts.append(ImagePart(queues[kind].pop(0), placed=True, type=kind))
    return parts


def _has_media_token(text: str) -> bool:
    return IMAGE_TOKEN in text or VIDEO_TOKEN in text


def _video_ref(src: Any, opts: dict[str, Any], where: str) -> ImageRef:
    if isinstance(src, (list, tuple)):
        if not src or not all(_is_image_like(f) and not isinstance(f, (str, bytes, bytearray)) for f in src):
            raise MessageError(f"{where}: a video given as frames must be a non-empty list of PIL images")
        src = list(src)
    elif not isinstance(src, (str, bytes, bytearray)):
        raise MessageError(f"{where}: a video must be a path, URL, data: URI, bytes or a list of PIL frames, "
                           f"got {type(src).__name__}")
    return ImageRef(src, opts, kind="video")


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
        if isinstance(img, dict) and "video" in img:  # {"video": ..., **options}
            refs.append(_video_ref(img["video"], {k: v for k, v in img.items() if k != "video"}, f"{where}[1][{i}]"))
        elif isinstance(img, dict):  # {"image"/"url": ..., **options}
            src = img.get("image", img.get("url"))
            if src is None:
                raise MessageError(f"{where}[1][{i}]: an image dict needs 'image', 'url' or 'video'")
            refs.append(ImageRef(src, {k: v for k, v in img.items() if k not in ("image", "url")}))
        elif img is None or not _is_image_like(img):
            raise MessageError(f"{where}[1][{i}]: not an image (got {type(img).__name__})")
        else:
            refs.append(ImageRef(img))
    if _has_media_token(prompt):
        parts = _split_image_tokens(prompt, 0, [r.kind for r in refs], where)
    else:
        parts = [ImagePart(i, type=r.kind) for i, r in enumerate(refs)] + [TextPart(prompt)]
    return Conversation([Message("user", parts)], refs)


def _url_part(part: dict[str, Any], kind: str, where: str) -> tuple[str, dict[str, Any]]:
    """``{"type": kind, kind: {"url": ..., **options}}`` (or ``kind: "url"``) -> ``(url, options)``."""
    spec = part.get(kind)
    if isinstance(spec, str):
        spec = {"url": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str) or not spec["url"]:
        raise MessageError(f"{where}.{kind}.url: missing or not a string")
    return spec["url"], {k: v for k, v in spec.items() if k != "url"}


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
            parts = [TextPart(content)] if not _has_media_token(content) else _split_image_tokens(content, len(images), 0, f"{w}.content")
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
                    url, opts = _url_part(part, kind, pw)
                    opts.pop("detail", None)
                    msg_images.append(ImageRef(url, opts))
                    raw.append(("image", None))
                elif kind == "image":
                    img = part.get("image", part.get("url"))
                    if img is None:
                        raise MessageError(f"{pw}.image: missing")
                    opts = {k: v for k, v in part.items() if k not in ("type", "image", "url")}
                    msg_images.append(ImageRef(img, opts))
                    raw.append(("image", None))
                elif kind == "video_url":
                    url, opts = _url_part(part, kind, pw)
                    msg_images.append(_video_ref(url, opts, f"{pw}.video_url"))
                    raw.append(("video", None))
                elif kind == "video":
                    vid = part.get("video", part.get("url"))
                    if vid is None:
                        raise MessageError(f"{pw}.video: missing")
                    opts = {k: v for k, v in part.items() if k not in ("type", "video", "url")}
                    msg_images.append(_video_ref(vid, opts, f"{pw}.video"))
                    raw.append(("video", None))
                else:
                    raise MessageError(f"{pw}.type: unsupported content type {kind!r} (use 'text', 'image_url', "
                                       "'image', 'video_url' or 'video')")
            text_all = "".join(t for k, t in raw if k == "text")
            if _has_media_token(text_all):
                parts = _split_image_tokens(text_all, len(images), [r.kind for r in msg_images], f"{w}.content")
            else:
                ii = len(images)
                for kind, text in raw:
                    if kind == "text":
                        parts.append(TextPart(text))
                    else:
                        parts.append(ImagePart(ii, type=kind))
                        ii += 1
            images.extend(msg_images)
        else:
            raise MessageError(f"{w}.content: must be a string or a list of parts, got {type(content).__name__}")
        if role != "user" and any(isinstance(p, ImagePart) for p in parts):
            raise MessageError(f"{w}: images and videos are only accepted in user messages")
        out.append(Message(role, parts))
    return Conversation(out, images)


def to_conversation(prompt: Any, where: str = "prompt") -> Conversation:
    """One prompt in any accepted form -> Conversation."""
    if isinstance(prompt, Conversation):
        return prompt
    if isinstance(prompt, RawText):
        return Conversation([Message("user", [TextPart(str(prompt))])], [], raw=True)
    if isinstance(prompt, str):
        if _has_media_token(prompt):
            tok = IMAGE_TOKEN if IMAGE_TOKEN in prompt else VIDEO_TOKEN
            raise MessageError(f"{where}: the text has {tok} but no {'image' if tok == IMAGE_TOKEN else 'video'} "
                               "was given")
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
