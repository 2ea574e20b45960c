"""Qwen2 decoder: LLaMA with biases on q/k/v (none on o) and, often, tied embeddings.

Also the language half of Qwen2-VL: pass ``mrope_section`` in the config's ``rope_scaling`` /
``rope_parameters`` and feed ``[3, T]`` positions.
"""

from __future__ import annotations

from vlkit.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
    o_bias = False
