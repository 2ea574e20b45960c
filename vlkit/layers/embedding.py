"""Vocabulary-parallel token embedding and LM head.

Each rank holds ``ceil(vocab / tp)`` rows of the table (the last rank's tail is zero padding).
The embedding looks up the ids it owns and all-reduces; the LM head computes the logits of its
rows and gathers them on rank 0, which is the only rank that samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.layers.linear import linear
from vlkit.layers.tp import all_reduce, gather_to_first, tp_rank, tp_world_size
from vlkit.layers.weights import check_weight_shape


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_world_size()
        self.num_embeddings = num_embeddings
        self.per_rank = -(-num_embeddings // self.tp_size)
        self.start = self.tp_rank * self.per_rank
        self.end = min(self.start + self.per_rank, num_embeddings)
        self.weight = nn.Parameter(torch.empty(self.per_rank, embedding_dim))
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        check_weight_shape(param, (self.num_embeddings, param.shape[1]), loaded)
        n = max(0, self.end - self.start)
        with torch.no_grad():
            param.data.zero_()
            if n:
                param.data[:n].copy_(loaded.narrow(0, self.start, n))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        mask = (input_ids >= self.start) & (input_ids < self.end)
        local = torch.where(mask, input_ids - self.start, torch.zeros_like(input_ids))
        y = F.embedding(local, self.weight) * mask.unsqueeze(-1).to(self.weight.dtype)
        return all_reduce(y)


class ParallelLMHead(VocabParallelEmbedding):
    """``logits = hidden @ W^T`` over the vocabulary shards; full logits on rank 0, ``None`` elsewhere."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False):
        super().__init__(num_embeddings, embedding_dim)
        if bias:
            raise NotImplementedError("LM head bias is not supported")
        # oneDNN's packed weight (vlkit.layers.linear.prepack_linears) or a QuantizedWeight
        # (vlkit.layers.quant): the LM head is quantized with the linears, the input embedding
        # (a tied head's weight included) stays dense
        self.packed_weight = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = linear(hidden, self.weight, None, self.packed_weight)
        if self.tp_size == 1:
            return logits
        full = gather_to_first(logits, dim=-1)
        return None if full is None else full[..., : self.num_embeddings]
