"""When a request stops: the one place that decides it.

A request stops on a stop token id or an EOS id (unless ``ignore_eos``), once ``min_new_tokens``
came before it (until then the sampler may not pick those ids: :meth:`StopCriteria.blocked_ids`),
on a stop word in the text (the detokenizer matches it and cuts the text before it), or by
length (``max_new_tokens`` or ``session_len``). The EOS ids of a checkpoint are gathered once,
by :func:`checkpoint_eos_ids`, for the engine and for chat templates alike.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from vlkit.engine.sequence import Sequence


def _ids(x: Any) -> list[int]:
    if x is None:
        return []
    if isinstance(x, int):
        return [x]
    return [int(i) for i in x]


def checkpoint_eos_ids(model_path: str | os.PathLike[str], config: dict[str, Any] | None, tokenizer: Any) -> set[int]:
    """EOS ids of a checkpoint: ``eos_token_id`` (int or list) of ``config`` and of
    ``generation_config.json``, and the tokenizer's ``eos_token_id`` — what HF ``generate`` stops on."""
    ids = set(_ids((config or {}).get("eos_token_id")))
    gen_path = os.path.join(str(model_path), "generation_config.json")
    if os.path.isfile(gen_path):
        try:
            with open(gen_path) as f:
                ids |= set(_ids(json.load(f).get("eos_token_id")))
        except (OSError, ValueError):
            pass
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    return ids


class StopCriteria:
    """The engine's stopping rules, with the EOS ids every request honours (unless ``ignore_eos``).

    Args:
        eos_token_ids: the checkpoint's EOS ids plus the chat template's single-token stop words.
        session_len: no sequence grows past this.
    """

    def __init__(self, eos_token_ids: set[int], session_len: int) -> None:
        self.eos_token_ids = set(eos_token_ids)
        self.session_len = session_len

    def stop_ids(self, seq: Sequence) -> set[int]:
        cfg = seq.gen_config
        ids = set(cfg.stop_token_ids or ())
        if not cfg.ignore_eos:
            ids |= self.eos_token_ids
        return ids

    def blocked_ids(self, seq: Sequence) -> list[int]:
        """Ids the sampler may not pick yet (``min_new_tokens`` not reached)."""
        if seq.num_output_tokens >= seq.gen_config.min_new_tokens:
            return []
        return sorted(self.stop_ids(seq))

    def reason(self, seq: Sequence, token: int) -> str | None:
        """Why ``seq`` stops after appending ``token`` (``"stop"``/``"length"``), or ``None``.

        Feeds the token to the detokenizer (stop words) whether or not it stops.
        """
        cfg = seq.gen_config
        n = seq.num_output_tokens
        may_stop = n > cfg.min_new_tokens  # token n-1 may stop once min_new_tokens came before it
        if may_stop and token in self.stop_ids(seq):
            return "stop"
        if seq.detokenizer is not None and seq.detokenizer.add([token]) and may_stop:
            return "stop"
        if n >= cfg.max_new_tokens or seq.num_tokens >= self.session_len:
            return "length"
        return None
