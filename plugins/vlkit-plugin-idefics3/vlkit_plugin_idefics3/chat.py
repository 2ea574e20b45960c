"""Idefics3's ChatTemplateWrapper: the prompt ``Idefics3Processor`` builds.

The template (the checkpoint's own, else ``templates/idefics3.jinja``, Idefics3-8B-Llama3's)
writes one ``<image>`` per image; each becomes what ``Idefics3Processor`` expands it to:

* split into ``rows x cols`` tiles: for every row, per tile
  ``<fake_token_around_image><row_R_col_C>`` + ``<image>`` * seq, then ``\\n``; then
  ``\\n<fake_token_around_image><global-img>`` + ``<image>`` * seq + ``<fake_token_around_image>``;
* not split (``rows == cols == 0``): ``<fake_token_around_image><global-img>`` + ``<image>`` * seq
  + ``<fake_token_around_image>``.

An image's ``<image>`` positions therefore form ``rows * cols + 1`` spans with text tokens
between them; the core hands them out in order (``PromptInputs.image_spans``), and the
VisionModel's rows come tile by tile, row-major, then the global image.
"""

from __future__ import annotations

from typing import Any

from vlkit.plugin import ChatTemplateWrapper, TemplateError

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
IMAGE_TOKEN = "<image>"


def image_prompt(rows: int, cols: int, image_seq_len: int) -> str:
    """What ``Idefics3Processor`` writes for one image of ``rows x cols`` tiles (0 x 0: not split)."""
    seq = IMAGE_TOKEN * image_seq_len
    global_image = f"{FAKE_TOKEN}{GLOBAL_TOKEN}{seq}{FAKE_TOKEN}"
    if rows == 0 and cols == 0:
        return global_image
    text = ""
    for r in range(rows):
        for c in range(cols):
            text += f"{FAKE_TOKEN}<row_{r + 1}_col_{c + 1}>{seq}"
        text += "\n"
    return f"{text}\n{global_image}"


class Idefics3ChatTemplate(ChatTemplateWrapper):
    image_marker = IMAGE_TOKEN
    image_token = IMAGE_TOKEN
    stop_words = ("<end_of_utterance>",)

    def image_text(self, index: int, num_tokens: int, meta: dict[str, Any]) -> str:
        try:
            rows, cols, seq = int(meta["rows"]), int(meta["cols"]), int(meta["image_seq_len"])
        except (KeyError, TypeError, ValueError) as exc:
            raise TemplateError(f"image {index}: Idefics3 needs the tile grid (rows, cols, image_seq_len) "
                                f"from preprocessing, got meta {meta!r}") from exc
        tiles = rows * cols + 1 if rows or cols else 1
        if tiles * seq != num_tokens:
            raise TemplateError(f"image {index}: {rows}x{cols} tiles (+ global) of {seq} tokens are "
                                f"{tiles * seq} tokens, preprocessing counted {num_tokens}")
        return image_prompt(rows, cols, seq)
