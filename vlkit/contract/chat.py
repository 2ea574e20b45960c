"""The ChatTemplateWrapper base class and sandboxed Jinja rendering of chat templates.

A wrapper turns a :class:`~vlkit.contract.messages.Conversation` into token ids with the family's image
markers, and says which positions each image's embeddings fill. Templates are Jinja files with
the variables HF chat templates use (``messages``, ``add_generation_prompt``, ``bos_token``,
``eos_token``...), so a template from a model repository drops in. Messages reach the template
in HF's form: ``{"role": ..., "content": [{"type": "text", "text": ...}, {"type": "image"}]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlkit.contract.messages import IMAGE_TOKEN, Conversation

if TYPE_CHECKING:  # pragma: no cover
    from vlkit.config import ChatTemplateConfig
    from vlkit.contract.family import ModelFamily

__all__ = ["IMAGE_TOKEN", "ChatTemplateWrapper", "PromptInputs", "TemplateError", "core_template", "render_template"]


class TemplateError(ValueError):
    """A chat template failed to render or no template could be found."""


@lru_cache(maxsize=1)
def _environment() -> Any:
    from jinja2.exceptions import TemplateError as JinjaTemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise JinjaTemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@lru_cache(maxsize=64)
def _compile(source: str) -> Any:
    return _environment().from_string(source)


def render_template(source: str, messages: list[dict[str, Any]], **variables: Any) -> str:
    """Render a chat template in a sandboxed Jinja environment (as transformers does).

    :param source: the template text.
    :param messages: HF-form messages.
    :param variables: ``add_generation_prompt``, ``bos_token``, ``eos_token``, ...
    """
    try:
        return _compile(source).render(messages=messages, **variables)
    except Exception as exc:
        raise TemplateError(f"chat template failed to render: {type(exc).__name__}: {exc}") from exc


def core_template(name: str) -> str:
    """A template shipped with the core (``vlkit/templates/NAME.jinja``)."""
    try:
        return resources.files("vlkit").joinpath("templates", f"{name}.jinja").read_text()
    except FileNotFoundError as exc:
        raise TemplateError(f"no core chat template named {name!r}; have: {core_template_names()}") from exc


def core_template_names() -> list[str]:
    root = resources.files("vlkit").joinpath("templates")
    return sorted(p.name[: -len(".jinja")] for p in root.iterdir() if p.name.endswith(".jinja"))


def checkpoint_template(model_path: Path) -> str | None:
    """The chat template a checkpoint carries (``chat_template.jinja``, ``chat_template.json``,
    or ``tokenizer_config.json``), or ``None``."""
    p = Path(model_path)
    if (p / "chat_template.jinja").is_file():
        return (p / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        f = p / name
        if f.is_file():
            try:
                tpl = json.loads(f.read_text()).get("chat_template")
            except (ValueError, AttributeError):
                continue
            if isinstance(tpl, str):
                return tpl
            if isinstance(tpl, list):  # [{"name": "default", "template": ...}]
                for entry in tpl:
                    if entry.get("name") == "default":
                        return entry["template"]
    return None


Span = tuple[int, int]


@dataclass
class PromptInputs:
    """A rendered, tokenized prompt: what :meth:`ChatTemplateWrapper.encode` returns.

    Args:
        prompt: the prompt text, image markers expanded.
        input_ids: token ids.
        image_spans: for each image, in image order, the ``(start, end)`` position spans its
            embeddings fill, in order: one span for most families, several where the family
            interleaves text tokens with an image's tiles (Idefics3's ``<row_1_col_1>``...).
            The spans of one image hold ``ImageItem.num_tokens`` positions in all, and the rows
            of its embedding tensor fill them in order. A plain ``(start, end)`` in place of an
            image's list means one span.
    """

    prompt: str
    input_ids: list[int]
    image_spans: list[list[Span]]

    def __post_init__(self) -> None:
        self.image_spans = [[(int(s[0]), int(s[1]))] if _is_span(s) else [(int(a), int(b)) for a, b in s]
                            for s in self.image_spans]

    @property
    def image_ranges(self) -> list[Span]:
        """One ``(start, end)`` per image, for families whose images fill one span each."""
        out = []
        for i, spans in enumerate(self.image_spans):
            if len(spans) != 1:
                raise TemplateError(f"image {i} fills {len(spans)} spans; read image_spans")
            out.append(spans[0])
        return out


def _is_span(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, int) for v in x)


def _inline_placed(msg: dict[str, Any], marker: str) -> dict[str, Any]:
    """``msg`` with each image the user placed in the text turned into ``marker`` in that text."""
    content = msg.get("content")
    if not isinstance(content, list) or not any(p.get("type") == "image" and p.get("placed") for p in content):
        return msg
    parts: list[dict[str, Any]] = []
    for p in content:
        if p.get("type") == "text" or (p.get("type") == "image" and p.get("placed")):
            text = p["text"] if p.get("type") == "text" else marker
            if parts and parts[-1].get("type") == "text":
                parts[-1] = {"type": "text", "text": parts[-1]["text"] + text}
            else:
                parts.append({"type": "text", "text": text})
        else:
            parts.append(p)
    return {**msg, "content": parts}


class ChatTemplateWrapper:
    """Base class of a family's prompt builder.

    The default flow, which most families keep and only configure:

    1. :meth:`template_messages` turns the conversation into HF-form messages;
    2. the selected Jinja template renders them; it writes :attr:`image_marker` where each
       image goes;
    3. :meth:`expand_images` replaces the i-th marker with :meth:`image_text` ``(i, n)`` —
       e.g. ``"<image>" * n`` for LLaVA;
    4. :meth:`tokenize` encodes the prompt, and the positions holding :attr:`image_token`
       ids are handed out in order, ``num_tokens`` to each image; an image's positions may lie
       in several spans with text tokens between them (:attr:`PromptInputs.image_spans`).

    Class attributes a family sets:
        image_marker: what the template emits for one image (``"<image>"``).
        image_token: the token whose positions receive image embeddings (default: the marker).
        default_template: template name used when none is chosen (a key of the family's
            ``chat_templates``, or a core template).
        stop_words: tokens that end a reply besides EOS (``"<|im_end|>"`` for ChatML); see
            :meth:`stop_token_ids`.
        tokenize_between_images: LLaVA's ``tokenizer_image_token`` (original LLaVA, MobileVLM
            and their kin): step 3-4 become "tokenize the text between image markers piece by
            piece, so that no token straddles an image, and fill each image's positions with
            :attr:`image_token_id`" — the tokenizer's ``unk`` id when its vocabulary has no
            image token, as the original checkpoints' have not.
        inline_placed_images: for templates that render only a message's text parts: an
            image the user placed inside the text (with ``IMAGE_TOKEN``) becomes
            :attr:`image_marker` within that text, so the template keeps it where it was;
            images not placed stay separate ``{"type": "image"}`` parts.
        video_marker / video_token: what the template emits for one video and the token whose
            positions receive its embeddings (Qwen2-VL: ``<|vision_start|><|video_pad|>
            <|vision_end|>`` / ``<|video_pad|>``); :meth:`video_text` expands it. Without a
            ``video_marker`` (a family that takes video as frames) a video reaches the template
            as an ``{"type": "image"}`` part, and :meth:`image_text` gets its item's ``meta``
            (with ``kind: "video"`` in it) to write the frames.
    """

    image_marker: str = "<image>"
    image_token: str | None = None
    default_template: str | None = None
    stop_words: tuple[str, ...] = ()
    tokenize_between_images: bool = False
    inline_placed_images: bool = False
    video_marker: str | None = None
    video_token: str | None = None

    def __init__(
        self,
        family: ModelFamily | None,
        hf_config: dict[str, Any],
        model_path: Path,
        tokenizer: Any,
        chat_template_config: ChatTemplateConfig | None = None,
    ) -> None:
        from vlkit.config import ChatTemplateConfig

        self.family = family
        self.hf_config = hf_config
        self.model_path = Path(model_path)
        self.tokenizer = tokenizer
        self.config = chat_template_config or ChatTemplateConfig()
        self.template_name, self.template = self.select_template()

    def stop_token_ids(self) -> list[int]:
        """Ids that end generation: the checkpoint's EOS ids (``generation_config.json`` /
        ``config.json`` ``eos_token_id``, the tokenizer's EOS; gathered by
        :func:`vlkit.engine.stopping.checkpoint_eos_ids`, as the engine does) and
        :attr:`stop_words` that are single tokens."""
        from vlkit.engine.stopping import checkpoint_eos_ids

        ids = checkpoint_eos_ids(self.model_path, self.hf_config, self.tokenizer)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        for word in self.stop_words:
            tid = self.tokenizer.convert_tokens_to_ids([word])[0]
            if tid is not None and tid != unk:
                ids.add(int(tid))
        return sorted(ids)

    # -- template choice -------------------------------------------------------------------
    def available_templates(self) -> dict[str, str]:
        """Template name -> Jinja source for this family (family's own, then the core's)."""
        out: dict[str, str] = {}
        if self.family is not None:
            for name, path in self.family.chat_templates.items():
                out[name] = Path(path).read_text()
        return out

    def select_template(self) -> tuple[str, str]:
        """``(name, source)`` of the template to use.

        Order: ``ChatTemplateConfig.chat_template`` (text or file), ``model_name`` (family
        template, then core template), the family's :attr:`default_template`, the checkpoint's
        own template, the family's first template.
        """
        cfg = self.config
        if cfg.chat_template:
            p = Path(cfg.chat_template)
            if len(cfg.chat_template) < 4096 and p.suffix == ".jinja" and p.is_file():
                return p.stem, p.read_text()
            return "custom", cfg.chat_template
        family_templates = self.available_templates()
        if cfg.model_name:
            if cfg.model_name in family_templates:
                return cfg.model_name, family_templates[cfg.model_name]
            try:
                return cfg.model_name, core_template(cfg.model_name)
            except TemplateError as exc:
                raise TemplateError(
                    f"unknown chat template {cfg.model_name!r}; this family has "
                    f"{sorted(family_templates)}, the core has {core_template_names()}"
                ) from exc
        if self.default_template:
            if self.default_template in family_templates:
                return self.default_template, family_templates[self.default_template]
            if self.default_template in core_template_names():
                return self.default_template, core_template(self.default_template)
        own = checkpoint_template(self.model_path)
        if own is not None:
            return "checkpoint", own
        if family_templates:
            name = next(iter(family_templates))
            return name, family_templates[name]
        raise TemplateError(f"no chat template for {self.model_path}: the checkpoint has none and the family names none")

    # -- rendering -------------------------------------------------------------------------
    def template_messages(self, conv: Conversation) -> list[dict[str, Any]]:
        """HF-form messages, with ``ChatTemplateConfig.system`` prepended when set."""
        msgs = conv.to_template()
        if conv.num_videos and not self.video_marker:  # videos as frames: the template writes an image
            msgs = [{**m, "content": [{**p, "type": "image", "video": True} if p.get("type") == "video" else p
                                      for p in m["content"]]} if isinstance(m.get("content"), list) else m
                    for m in msgs]
        if self.config.system is not None and not (msgs and msgs[0]["role"] == "system"):
            msgs = [{"role": "system", "content": [{"type": "text", "text": self.config.system}]}] + msgs
        if self.inline_placed_images:
            msgs = [_inline_placed(m, self.image_marker) for m in msgs]
        return msgs

    def template_variables(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {
            "bos_token": getattr(tok, "bos_token", None) or "",
            "eos_token": getattr(tok, "eos_token", None) or "",
            "pad_token": getattr(tok, "pad_token", None) or "",
            "unk_token": getattr(tok, "unk_token", None) or "",
            "IMAGE_TOKEN": IMAGE_TOKEN,
            "image_marker": self.image_marker,
            **({"video_marker": self.video_marker} if self.video_marker else {}),
        }

    def render(self, conv: Conversation, add_generation_prompt: bool = True) -> str:
        """The prompt text with one :attr:`image_marker` per image (not yet expanded)."""
        text = render_template(
            self.template,
            self.template_messages(conv),
            add_generation_prompt=add_generation_prompt,
            **self.template_variables(),
        )
        kinds = self.marker_kinds(conv)
        n = text.count(self.image_marker) if conv.num_images else 0
        if n != kinds.count("image"):
            raise TemplateError(
                f"template {self.template_name!r} placed {n} image marker(s) {self.image_marker!r} "
                f"for {kinds.count('image')} image(s)"
            )
        if self.video_marker and text.count(self.video_marker) != kinds.count("video"):
            raise TemplateError(
                f"template {self.template_name!r} placed {text.count(self.video_marker)} video marker(s) "
                f"{self.video_marker!r} for {kinds.count('video')} video(s)"
            )
        return text

    def marker_kinds(self, conv: Conversation) -> list[str]:
        """For each image and video of ``conv``, in order, the marker the template writes for it:
        ``"video"`` for a video where the family has a :attr:`video_marker`, else ``"image"``."""
        return ["video" if r.kind == "video" and self.video_marker else "image" for r in conv.images]

    def video_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        """What the ``index``-th video's marker becomes: ``num_tokens`` video tokens by default."""
        return (self.video_token or self.video_marker or "") * num_tokens

    def image_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        """What the ``index``-th image marker becomes: ``num_tokens`` image tokens by default."""
        return (self.image_token or self.image_marker) * num_tokens

    def expand_images(self, text: str, num_tokens: list[int], metas: list[dict[str, Any]] | None = None,
                      kinds: list[str] | None = None) -> str:
        """Each marker replaced by its item's text (:meth:`image_text` / :meth:`video_text`).
        ``kinds``: each item's marker (:meth:`marker_kinds`); the n-th image marker is the n-th
        image item, the n-th video marker the n-th video item."""
        metas = metas or [{} for _ in num_tokens]
        if not kinds or "video" not in kinds:
            pieces = text.split(self.image_marker)
            if len(pieces) - 1 != len(num_tokens):
                raise TemplateError(f"prompt has {len(pieces) - 1} image markers for {len(num_tokens)} images")
            out = [pieces[0]]
            for i, n in enumerate(num_tokens):
                out.append(self.image_text(i, n, metas[i]))
                out.append(pieces[i + 1])
            return "".join(out)
        import re

        pieces = re.split("(" + re.escape(self.image_marker) + "|" + re.escape(str(self.video_marker)) + ")", text)
        queues = {k: [i for i, kk in enumerate(kinds) if kk == k] for k in ("image", "video")}
        out = []
        for j, piece in enumerate(pieces):
            if j % 2 == 0:
                out.append(piece)
                continue
            kind = "image" if piece == self.image_marker else "video"
            if not queues[kind]:
                raise TemplateError(f"prompt has more {kind} markers than {kind}s")
            i = queues[kind].pop(0)
            text_of = self.image_text if kind == "image" else self.video_text
            out.append(text_of(i, num_tokens[i], metas[i]))
        if queues["image"] or queues["video"]:
            raise TemplateError(f"prompt has too few markers for its {len(kinds)} images and videos")
        return "".join(out)

    def add_special_tokens(self, prompt: str) -> bool:
        """Whether the tokenizer should add its special tokens (BOS): not if the prompt has it."""
        bos = getattr(self.tokenizer, "bos_token", None)
        return not (bos and prompt.startswith(bos))

    def tokenize(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode(prompt, add_special_tokens=self.add_special_tokens(prompt)))

    @property
    def video_token_id(self) -> int:
        tok = self.video_token or self.video_marker
        tid = self.tokenizer.convert_tokens_to_ids([tok])[0] if tok else None
        if tid is None or tid < 0 or tid == getattr(self.tokenizer, "unk_token_id", None):
            raise TemplateError(f"the tokenizer has no token {tok!r} for videos")
        return int(tid)

    @property
    def image_token_id(self) -> int:
        tok = self.image_token or self.image_marker
        ids = self.tokenizer.convert_tokens_to_ids([tok])
        tid = ids[0] if ids else None
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if tid is None or tid < 0 or tid == unk:
            if self.tokenize_between_images:  # positions only: the engine writes embeddings there
                return int(unk) if unk is not None else 0
            raise TemplateError(f"the tokenizer has no token {tok!r} for images")
        return int(tid)

    def encode(
        self, conv: Conversation, num_image_tokens: list[int], metas: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> PromptInputs:
        """Render, expand and tokenize a conversation; locate each image's positions."""
        text = self.render(conv, add_generation_prompt)
        if self.tokenize_between_images:
            return self._encode_between_images(text, num_image_tokens, metas)
        kinds = self.marker_kinds(conv) if conv.num_videos else None
        if num_image_tokens:
            text = self.expand_images(text, num_image_tokens, metas, kinds)
        ids = self.tokenize(text)
        spans = self.image_spans(ids, num_image_tokens, kinds) if num_image_tokens else []
        return PromptInputs(text, ids, spans)

    def _encode_between_images(self, text: str, num_image_tokens: list[int],
                               metas: list[dict[str, Any]] | None) -> PromptInputs:
        chunks = text.split(self.image_marker)
        if len(chunks) - 1 != len(num_image_tokens):
            raise TemplateError(f"prompt has {len(chunks) - 1} image markers for {len(num_image_tokens)} images")
        bos = getattr(self.tokenizer, "bos_token_id", None)
        image_id = self.image_token_id if num_image_tokens else 0
        ids: list[int] = []
        ranges: list[list[Span]] = []
        for i, chunk in enumerate(chunks):
            piece = list(self.tokenizer(chunk).input_ids)  # each piece on its own, as LLaVA does
            if i > 0 and piece and bos is not None and piece[0] == bos:
                piece = piece[1:]
            ids.extend(piece)
            if i < len(num_image_tokens):
                ranges.append([(len(ids), len(ids) + num_image_tokens[i])])
                ids.extend([image_id] * num_image_tokens[i])
        prompt = self.expand_images(text, num_image_tokens, metas) if num_image_tokens else text
        return PromptInputs(prompt, ids, ranges)

    def image_spans(self, input_ids: list[int], num_image_tokens: list[int],
                    kinds: list[str] | None = None) -> list[list[Span]]:
        """Hand the positions of :attr:`image_token_id` out in order, ``num_image_tokens[i]`` to
        image ``i``, each image's as its contiguous spans; with ``kinds`` (:meth:`marker_kinds`),
        the positions of :attr:`video_token_id` likewise to the videos."""
        kinds = kinds or ["image"] * len(num_image_tokens)
        out: list[list[Span]] = [[] for _ in num_image_tokens]
        for kind in ("image", "video"):
            mine = [i for i, k in enumerate(kinds) if k == kind]
            if not mine:
                continue
            tid = self.image_token_id if kind == "image" else self.video_token_id
            positions = [i for i, t in enumerate(input_ids) if t == tid]
            need = sum(num_image_tokens[i] for i in mine)
            if len(positions) != need:
                raise TemplateError(f"prompt has {len(positions)} {kind} tokens, the {kind}s need {need}")
            k = 0
            for i in mine:
                spans: list[Span] = []
                for p in positions[k:k + num_image_tokens[i]]:
                    if spans and spans[-1][1] == p:
                        spans[-1] = (spans[-1][0], p + 1)
                    else:
                        spans.append((p, p + 1))
                out[i] = spans
                k += num_image_tokens[i]
        return out
