"""InternVL's ChatTemplateWrappers.

Original layout (:class:`InternVLChatTemplate`): the template named by config.json's
``template`` key (``internlm2-chat``, ``Hermes-2``, ``internvl2_5``, ``phi3-chat``), with
config.json's ``system_message`` as the default system prompt when it has one. Each image is
written ``<image>`` by the template and becomes ``<img>`` + ``<IMG_CONTEXT>`` × (tokens per
tile × tiles) + ``</img>``; images with nothing between their markers share one
``<img>…</img>`` span, as the original's "combined images" prompt (one ``<image>`` for the
concatenated tiles) and lmdeploy build it.

transformers' layout (:class:`InternVLHFChatTemplate`): the checkpoint's own chat template,
whose image parts are ``<IMG_CONTEXT>``; each becomes ``<img>`` + ``<IMG_CONTEXT>`` × n +
``</img>`` as ``InternVLProcessor`` expands it. Images placed with ``IMAGE_TOKEN`` are written
inline in the text.
"""

from __future__ import annotations

from typing import Any

from vlkit.plugin import ChatTemplateWrapper, TemplateError

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"

# config.json "template" -> our template name (the same names)
ORIGINAL_TEMPLATES = ("internlm2-chat", "Hermes-2", "internvl2_5", "phi3-chat")
_STOP = {"phi3-chat": ("<|end|>",)}


class InternVLChatTemplate(ChatTemplateWrapper):
    image_marker = "<image>"
    image_token = IMG_CONTEXT
    stop_words = ("<|im_end|>",)

    def __init__(self, family: Any, hf_config: dict[str, Any], model_path: Any, tokenizer: Any,
                 chat_template_config: Any = None) -> None:
        name = hf_config.get("template")
        self.default_template = name if name in ORIGINAL_TEMPLATES else "internvl2_5"
        super().__init__(family, hf_config, model_path, tokenizer, chat_template_config)
        self.stop_words = _STOP.get(self.template_name, ("<|im_end|>",))

    def template_variables(self) -> dict[str, Any]:
        variables = super().template_variables()
        system = self.hf_config.get("system_message")
        if isinstance(system, str):
            variables["default_system"] = system
        return variables

    def expand_images(self, text: str, num_tokens: list[int], metas: list[dict[str, Any]] | None = None,
                      kinds: list[str] | None = None) -> str:
        """``<img>…</img>`` per image (images written next to each other share one span, as
        lmdeploy joins them); a video (``meta["kind"] == "video"``) becomes the original video
        chat's ``Frame1: <img>…</img>\nFrame2: …`` lines, one span per frame."""
        metas = metas or [{} for _ in num_tokens]
        pieces = text.split(self.image_marker)
        if len(pieces) - 1 != len(num_tokens):
            raise TemplateError(f"prompt has {len(pieces) - 1} image markers for {len(num_tokens)} images")
        video = [m.get("kind") == "video" for m in metas]
        out = [pieces[0]]
        for i, n in enumerate(num_tokens):
            if video[i]:
                out.append(frames_text(metas[i]["frame_tokens"], self.image_token))
            else:
                joined_before = i > 0 and pieces[i] == "" and not video[i - 1]
                joined_after = i + 1 < len(num_tokens) and pieces[i + 1] == "" and not video[i + 1]
                out.append(("" if joined_before else IMG_START) + self.image_token * n + ("" if joined_after else IMG_END))
            out.append(pieces[i + 1])
        return "".join(out)


def frames_text(frame_tokens: list[int], context: str = IMG_CONTEXT) -> str:
    """``Frame1: <img>…</img>\nFrame2: <img>…</img>\n…FrameN: <img>…</img>`` (the template's
    newline after the marker ends the last line)."""
    return "\n".join(f"Frame{j + 1}: {IMG_START}{context * n}{IMG_END}" for j, n in enumerate(frame_tokens))


class InternVLHFChatTemplate(ChatTemplateWrapper):
    image_marker = IMG_CONTEXT
    image_token = IMG_CONTEXT
    inline_placed_images = True
    stop_words = ("<|im_end|>",)

    def image_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        if meta.get("kind") == "video":  # InternVLProcessor's video prompt: one line per frame
            return frames_text(meta["frame_tokens"])
        return IMG_START + IMG_CONTEXT * num_tokens + IMG_END
