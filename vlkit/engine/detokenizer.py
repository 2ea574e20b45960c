"""Incremental detokenization and stop-word matching for one request.

Each step decodes only a short window (the last few tokens before the new ones), so the cost
does not grow with the output; text ending in an incomplete UTF-8 character (``"\\ufffd"``) waits
for the next token. Stop words are matched on the text; on a match the text is cut before the
stop word (vLLM's behaviour) and the request stops. Text that could still be the beginning of a
stop word is held back from ``new_text`` until it is known not to be.
"""

from __future__ import annotations

from typing import Any

_CONTEXT = 5  # prompt tokens decoded ahead of the output for correct leading spaces


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool, stop_words: list[str] | None):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self.emitted = 0
        self.stop_words = [w for w in (stop_words or []) if w]
        self.holdback = max((len(w) for w in self.stop_words), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def add(self, new_ids: list[int]) -> bool:
        """Append tokens; return True when a stop word ended the text."""
        self.ids.extend(new_ids)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            start = max(0, len(self.text) - self.holdback)
            self.text += delta
            for w in self.stop_words:
                idx = self.text.find(w, start)
                if idx != -1:
                    self.text = self.text[:idx]
                    return True
        return False

    def take_new_text(self, finished: bool) -> str:
        """The text not handed out yet (all of it once finished)."""
        end = len(self.text) if finished else max(self.emitted, len(self.text) - self.holdback)
        out = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return out
