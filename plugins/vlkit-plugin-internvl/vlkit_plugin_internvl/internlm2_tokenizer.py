"""InternLM2's tokenizer, read by the plugin's own code (no checkpoint code runs).

InternVL2-2B/4B/8B/26B and InternVL2_5-4B/8B/26B ship ``tokenizer.model`` (a sentencepiece BPE
model with byte fallback) and name ``InternLM2Tokenizer`` in ``tokenizer_config.json``'s
``auto_map``: transformers would run (or ask to run) ``tokenization_internlm2.py`` from the
checkpoint. This module implements the same rules on the ``sentencepiece`` library:

* **encode**: the text is split on the added tokens of ``tokenizer_config.json``
  (``added_tokens_decoder``, plus ``added_tokens.json`` where present; longest first, honouring
  each one's ``lstrip``/``rstrip``); each added token is its id, every other piece of text is
  ``sentencepiece.encode`` on its own (so each gets the model's dummy prefix, if its
  normalizer adds one); ``<s>`` (sentencepiece's ``bos_id``) goes first when ``add_bos_token``
  (default true), ``</s>`` last when ``add_eos_token`` (default false).
* **decode**: as ``InternLM2TokenizerFast``'s decoder: pieces with ``▁`` as a space, byte pieces
  (``<0x0A>``) as bytes, consecutive bytes fused into UTF-8, added tokens as their text, then
  one leading space stripped. ``skip_special_tokens`` drops the special tokens (those marked
  ``special`` and the bos/eos/unk/pad tokens).

The object offers what vlkit uses of a transformers tokenizer (``encode``, ``decode``,
``__call__(text).input_ids``, ``convert_tokens_to_ids``, ``convert_ids_to_tokens``,
``get_vocab``, ``bos/eos/unk/pad_token(_id)``, ``len()``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

VOCAB_FILE = "tokenizer.model"
CLASS_NAME = "InternLM2Tokenizer"


def is_internlm2_tokenizer(model_path: str | Path) -> bool:
    """Whether the checkpoint's tokenizer is InternLM2's (by ``tokenizer_class`` or ``auto_map``)."""
    cfg = _read_json(Path(model_path) / "tokenizer_config.json")
    names = [cfg.get("tokenizer_class") or ""]
    auto = (cfg.get("auto_map") or {}).get("AutoTokenizer")
    if isinstance(auto, str):
        names.append(auto)
    elif isinstance(auto, list):
        names.extend(a for a in auto if isinstance(a, str))
    return any(n.split(".")[-1] in (CLASS_NAME, CLASS_NAME + "Fast") for n in names)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _content(tok: Any) -> str | None:
    """A token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


class InternLM2Tokenizer:
    """InternLM2's tokenizer on ``sentencepiece`` (see the module's docstring for its rules)."""

    padding_side = "left"

    def __init__(self, model_path: str | Path) -> None:
        try:
            import sentencepiece as spm
        except ImportError as exc:  # a dependency of the plugin; missing only in a broken install
            raise ImportError("InternLM2's tokenizer needs the 'sentencepiece' package: "
                              "pip install sentencepiece") from exc
        path = Path(model_path)
        vocab_file = path / VOCAB_FILE
        if not vocab_file.is_file():
            raise FileNotFoundError(f"{path} names {CLASS_NAME} but has no {VOCAB_FILE}")
        cfg = _read_json(path / "tokenizer_config.json")
        self.sp = spm.SentencePieceProcessor(model_file=str(vocab_file))
        self.sp_size = int(self.sp.get_piece_size())
        self.add_bos_token = bool(cfg.get("add_bos_token", True))
        self.add_eos_token = bool(cfg.get("add_eos_token", False))

        # added tokens: id -> (content, special, lstrip, rstrip)
        added: dict[int, tuple[str, bool, bool, bool]] = {}
        for sid, spec in (cfg.get("added_tokens_decoder") or {}).items():
            spec = spec if isinstance(spec, dict) else {"content": spec}
            added[int(sid)] = (spec["content"], bool(spec.get("special", False)),
                               bool(spec.get("lstrip", False)), bool(spec.get("rstrip", False)))
        for content, tid in _read_json(path / "added_tokens.json").items():
            added.setdefault(int(tid), (content, False, False, False))
        self.added_tokens_decoder = {i: c for i, (c, *_rest) in added.items()}
        self.added_tokens_encoder = {c: i for i, c in self.added_tokens_decoder.items()}
        self._strip = {c: (ls, rs) for c, _sp, ls, rs in added.values()}

        # special tokens; InternLM2Tokenizer takes the bos/eos ids from the sentencepiece model
        self.bos_token = _content(cfg.get("bos_token", "<s>"))
        self.eos_token = _content(cfg.get("eos_token", "</s>"))
        self.unk_token = _content(cfg.get("unk_token", "<unk>"))
        self.pad_token = _content(cfg.get("pad_token", "</s>"))
        self.bos_token_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else self._id(self.bos_token)
        self.eos_token_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else self._id(self.eos_token)
        self.unk_token_id = self._id(self.unk_token)
        self.pad_token_id = self._id(self.pad_token)
        self.all_special_ids = {i for i, (_c, special, *_r) in added.items() if special}
        self.all_special_ids |= {i for i in (self.bos_token_id, self.eos_token_id, self.unk_token_id,
                                             self.pad_token_id) if i is not None}
        self.all_special_tokens = [self._piece(i) for i in sorted(self.all_special_ids)]
        words = sorted(self.added_tokens_encoder, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(re.escape(w) for w in words) + ")") if words else None
        self.vocab_size = max([self.sp_size - 1, *self.added_tokens_decoder]) + 1
        self.name_or_path = str(path)

    @classmethod
    def from_pretrained(cls, model_path: str | Path, **_: Any) -> InternLM2Tokenizer:
        return cls(model_path)

    # -- vocabulary ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.vocab_size

    def _id(self, token: str | None) -> int | None:
        if token is None:
            return None
        if token in self.added_tokens_encoder:
            return self.added_tokens_encoder[token]
        tid = self.sp.piece_to_id(token)
        # piece_to_id answers unk for an unknown piece; only the unk piece itself is unk
        if tid == self.sp.unk_id() and token != self.sp.id_to_piece(tid):
            return self.sp.unk_id()
        return int(tid)

    def _piece(self, index: int) -> str | None:
        if index in self.added_tokens_decoder:
            return self.added_tokens_decoder[index]
        if 0 <= index < self.sp_size:
            return self.sp.id_to_piece(index)
        return None

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp.id_to_piece(i): i for i in range(self.sp_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> Any:
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> Any:
        if isinstance(ids, int):
            return self._piece(ids)
        return [self._piece(int(i)) for i in ids]

    # -- encode -------------------------------------------------------------------------------
    def _split(self, text: str) -> list[str]:
        """The text cut on added tokens, each token's lstrip/rstrip applied to its neighbours."""
        if self._split_re is None:
            return [text]
        parts = self._split_re.split(text)  # odd indexes are added tokens
        for i in range(1, len(parts), 2):
            lstrip, rstrip = self._strip.get(parts[i], (False, False))
            if lstrip:
                parts[i - 1] = parts[i - 1].rstrip()
            if rstrip and i + 1 < len(parts):
                parts[i + 1] = parts[i + 1].lstrip()
        return parts

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(self._split(text)):
            if i % 2:
                ids.append(self.added_tokens_encoder[part])
            elif part:
                ids.extend(self.sp.encode(part))
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self.add_eos_token and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> Any:
        return _Encoding(self.encode(text, add_special_tokens=add_special_tokens))

    # -- decode -------------------------------------------------------------------------------
    def decode(self, ids: Any, skip_special_tokens: bool = False, **_: Any) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        out: list[str] = []
        buf = bytearray()

        def flush() -> None:
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf.clear()

        for i in (int(x) for x in ids):
            if skip_special_tokens and i in self.all_special_ids:
                continue
            if i in self.added_tokens_decoder or not 0 <= i < self.sp_size:
                flush()
                out.append(self.added_tokens_decoder.get(i, ""))
            elif self.sp.is_byte(i):
                buf.append(int(self.sp.id_to_piece(i)[3:-1], 16))
            else:
                buf.extend(self.sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        flush()
        text = "".join(out)
        return text[1:] if text.startswith(" ") else text


class _Encoding(dict):
    """``tokenizer(text)``'s answer: ``.input_ids`` and ``["input_ids"]`` both work."""

    def __init__(self, ids: list[int]) -> None:
        super().__init__(input_ids=ids, attention_mask=[1] * len(ids))

    @property
    def input_ids(self) -> list[int]:
        return self["input_ids"]

    @property
    def attention_mask(self) -> list[int]:
        return self["attention_mask"]
