"""Next-token selection for a batch of sequences, each with its own parameters, in one pass.

Per row, in this order: repetition penalty (HF rule: divide positive logits of seen tokens,
multiply negative ones), masking of EOS / stop tokens until ``min_new_tokens`` is reached, then
either arg-max (greedy) or temperature -> top-k -> top-p -> min-p -> a draw. Draws use the
exponential race ``argmax(p / E)``, ``E ~ Exp(1)`` drawn from the row's own
``torch.Generator``, so a seeded request samples the same tokens alone or in any batch.

Log-probabilities are those of the model's distribution (``log_softmax`` of the raw logits),
as vLLM and lmdeploy report them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlkit.engine.sequence import Sequence
from vlkit.engine.stopping import StopCriteria


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # top-N plus the chosen token, per row


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    g.manual_seed(seed)
    return g


class Sampler:
    """Samples every row of a step in one batched op; ``stopping`` says which ids are blocked
    (``min_new_tokens`` not reached)."""

    def __init__(self, stopping: StopCriteria):
        self.stopping = stopping

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
        logits = logits.float()
        b, vocab = logits.shape
        dev = logits.device
        cfgs = [s.gen_config for s in seqs]

        want_lp = [c.logprobs is not None for c in cfgs]
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_lp) else None

        penalties = [c.repetition_penalty for c in cfgs]
        if any(p != 1.0 for p in penalties):
            logits = logits.clone()
            rows = [i for i, p in enumerate(penalties) if p != 1.0]
            for i in rows:  # seen-token sets differ in size per row
                ids = torch.tensor(sorted(set(seqs[i].token_ids)), device=dev)
                seen = logits[i, ids]
                p = penalties[i]
                logits[i, ids] = torch.where(seen < 0, seen * p, seen / p)

        blocked = [self.stopping.blocked_ids(s) for s in seqs]
        if any(blocked):
            for i, ids in enumerate(blocked):
                if ids:
                    logits[i, [t for t in ids if 0 <= t < vocab]] = float("-inf")

        greedy = [c.greedy for c in cfgs]
        tokens = torch.empty(b, dtype=torch.int64, device=dev)
        g_rows = [i for i, gr in enumerate(greedy) if gr]
        s_rows = [i for i, gr in enumerate(greedy) if not gr]
        if len(g_rows) == b:
            tokens = logits.argmax(dim=-1)
        elif g_rows:
            gi = torch.tensor(g_rows, device=dev)
            tokens[gi] = logits[gi].argmax(dim=-1)
        if s_rows:
            si = torch.tensor(s_rows, device=dev)
            tokens[si] = self._sample(logits[si], [seqs[i] for i in s_rows])

        token_list = tokens.tolist()
        lps: list[dict[int, float] | None] = [None] * b
        if raw_logprobs is not None:
            n_top = max((c.logprobs or 0) for c in cfgs)
            top_v, top_i = raw_logprobs.topk(n_top, dim=-1) if n_top else (None, None)
            chosen = raw_logprobs.gather(1, tokens[:, None])[:, 0].tolist()
            tv = top_v.tolist() if n_top else None
            ti = top_i.tolist() if n_top else None
            for i, c in enumerate(cfgs):
                if c.logprobs is None:
                    continue
                d = {}
                if c.logprobs:
                    d = dict(zip(ti[i][: c.logprobs], tv[i][: c.logprobs]))
                d[token_list[i]] = chosen[i]
                lps[i] = d
        return SampleResult(token_list, lps)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        dev = logits.device
        cfgs = [s.gen_config for s in seqs]
        temp = torch.tensor([c.temperature for c in cfgs], device=dev, dtype=torch.float32)
        logits = logits / temp[:, None]
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        vocab = logits.shape[-1]
        rank = torch.arange(vocab, device=dev)[None, :]
        top_k = torch.tensor([c.top_k if c.top_k > 0 else vocab for c in cfgs], device=dev)
        sorted_logits = sorted_logits.masked_fill(rank >= top_k[:, None], float("-inf"))
        top_p = torch.tensor([c.top_p for c in cfgs], device=dev, dtype=torch.float32)
        if bool((top_p < 1.0).any()):
            probs = sorted_logits.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
            drop = (before >= top_p[:, None]) & (rank > 0)
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        min_p = torch.tensor([c.min_p for c in cfgs], device=dev, dtype=torch.float32)
        if bool((min_p > 0).any()):
            probs = sorted_logits.softmax(dim=-1)
            drop = probs < (min_p[:, None] * probs[:, :1])
            sorted_logits = sorted_logits.masked_fill(drop & (rank > 0), float("-inf"))
        probs = sorted_logits.softmax(dim=-1)
        # Exponential race per row, in vocabulary order so the draw does not depend on the sort.
        noise = torch.empty_like(probs)
        for i, s in enumerate(seqs):
            noise[i].exponential_(generator=s.generator)
        noise_sorted = noise.gather(1, order)
        choice = (probs / noise_sorted).argmax(dim=-1)
        return order.gather(1, choice[:, None])[:, 0]
