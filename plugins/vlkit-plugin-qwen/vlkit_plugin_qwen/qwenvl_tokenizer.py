"""Qwen-VL-Chat's tokenizer: tiktoken BPE from ``qwen.tiktoken`` plus Qwen's special tokens.

``qwen.tiktoken`` holds one ``base64(token bytes) rank`` per line. Special tokens take the ids
after the ranks, in this order: ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``,
``<|extra_0|>`` … ``<|extra_204|>``, then the image/grounding tags ``<ref>``, ``</ref>``,
``<box>``, ``</box>``, ``<quad>``, ``</quad>``, ``<img>``, ``</img>``, ``<imgpad>`` (so that
``<img>`` is config.json's ``visual.image_start_id``, 151857 in Qwen-VL-Chat). Special tokens
written in the text are encoded as such; nothing is added around the text (no BOS).

The object offers what vlkit uses of a transformers tokenizer: ``encode``, ``decode``,
``__call__(text).input_ids``, ``convert_tokens_to_ids``, ``convert_ids_to_tokens``,
``eos_token_id`` (``<|endoftext|>``), ``bos_token`` (none).
"""

from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
ENDOFTEXT, IMSTART, IMEND = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))
IMAGE_ST = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>")
SPECIAL_TOKENS = (ENDOFTEXT, IMSTART, IMEND, *EXTRAS, *IMAGE_ST)
VOCAB_FILE = "qwen.tiktoken"


def load_ranks(path: str | Path) -> dict[bytes, int]:
    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def write_ranks(path: str | Path, tokens: list[bytes]) -> None:
    """Write a ``qwen.tiktoken`` file: ``tokens[i]`` gets rank ``i``."""
    Path(path).write_bytes(b"".join(base64.b64encode(t) + b" " + str(i).encode() + b"\n" for i, t in enumerate(tokens)))


class QwenTiktokenTokenizer:
    bos_token = None
    bos_token_id = None
    unk_token = None
    unk_token_id = None

    def __init__(self, vocab_file: str | Path) -> None:
        import tiktoken

        self.mergeable_ranks = load_ranks(vocab_file)
        base = len(self.mergeable_ranks)
        self.special_tokens = {tok: base + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.encoding = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=self.mergeable_ranks,
                                          special_tokens=self.special_tokens)
        self.decoder: dict[int, bytes | str] = {v: k for k, v in self.mergeable_ranks.items()}
        self.decoder.update({v: k for k, v in self.special_tokens.items()})
        self.eos_token = ENDOFTEXT
        self.eos_token_id = self.special_tokens[ENDOFTEXT]
        self.pad_token = ENDOFTEXT
        self.pad_token_id = self.eos_token_id
        self.vocab_size = base + len(SPECIAL_TOKENS)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        import unicodedata

        return self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())

    def __call__(self, text: str, **kwargs: Any) -> Any:
        return SimpleNamespace(input_ids=self.encode(text))

    def decode(self, ids: Any, skip_special_tokens: bool = False, **_: Any) -> str:
        ids = [int(i) for i in (ids if isinstance(ids, (list, tuple)) else list(ids))]
        if skip_special_tokens:
            ids = [i for i in ids if i < self.eos_token_id]
        return self.encoding.decode(ids, errors="replace")

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    def _token_id(self, token: str | bytes) -> int | None:
        if isinstance(token, str) and token in self.special_tokens:
            return self.special_tokens[token]
        key = token.encode("utf-8") if isinstance(token, str) else token
        return self.mergeable_ranks.get(key)

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        if isinstance(ids, int):
            return self.decoder.get(ids)
        return [self.decoder.get(int(i)) for i in ids]
