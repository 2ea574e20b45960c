"""Phi-3 decoder (``Phi3ForCausalLM``: Phi-3-mini/medium 4k and 128k, InternVL2-4B's language model).

The LLaMA computation with the projections already fused in the checkpoint:
``self_attn.qkv_proj`` holds ``[q; k; v]`` rows and ``mlp.gate_up_proj`` holds ``[gate; up]``
(the MLP is ``down(silu(gate) * up)``). The 128k variants scale RoPE with LongRoPE
(:mod:`vlkit.layers.rotary`). Phi-3-small (``Phi3SmallForCausalLM``, block-sparse attention) is
another architecture and is not served.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from vlkit.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping: dict[str, tuple[str, Any]] = {}  # the checkpoint is fused already
    qkv_bias = False
    o_bias = False

    def map_weight(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, Any, torch.Tensor]]:
        # qkv_proj goes in whole: QKVParallelLinear's loader splits a fused [q | k | v] tensor by
        # head. gate_up_proj is split here, so that each rank takes its slice of gate and of up.
        if ".mlp.gate_up_proj." in name and tensor.shape[0] == 2 * self.text_config.intermediate_size:
            for shard, part in enumerate(tensor.chunk(2, dim=0)):
                yield name, shard, part
            return
        yield name, None, tensor  # a misshaped tensor is reported by the layer's loader

    def checkpoint_name(self, param_name: str, shard_id: Any) -> str:
        return param_name  # fused parameters are stored fused, under the same names
