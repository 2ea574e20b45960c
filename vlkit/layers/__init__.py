"""Building blocks shared by the language backbones.

``attention`` (paged KV cache), ``rotary`` (RoPE incl. scaling and M-RoPE), ``norm`` (RMSNorm),
``activation`` (SiLU-and-mul), ``linear`` (column/row-parallel), ``embedding`` (vocab-parallel
embedding and LM head). Parallel layers read the tensor-parallel rank and size from
:mod:`vlkit.layers.tp` when they are built.
"""
