"""The paged KV cache tensors and how many blocks fit in memory.

One tensor per layer, ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` (keys, values);
see :mod:`vlkit.layers.attention` for how slots map to tokens. The number of blocks is
``EngineConfig.num_blocks`` when set, else ``cache_max_entry_count`` x the free memory: free
CUDA memory on a GPU, available RAM on CPU (psutil if installed, else ``/proc/meminfo``).
"""

from __future__ import annotations

import torch


def available_ram_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def free_device_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram_bytes()


def block_bytes(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one block across all layers (keys and values)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * elem


def num_blocks_for(
    free_bytes: int,
    fraction: float,
    num_layers: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    max_blocks: int | None = None,
) -> int:
    """How many blocks ``fraction`` of ``free_bytes`` holds (at least 1, at most ``max_blocks``)."""
    n = int(free_bytes * fraction) // block_bytes(num_layers, block_size, num_kv_heads, head_dim, dtype)
    if max_blocks is not None:
        n = min(n, max_blocks)
    return max(1, n)


def allocate_kv_cache(
    num_layers: int,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """One ``[2, num_blocks, block_size, num_kv_heads, head_dim]`` tensor per layer.

    Left uninitialised so that memory is committed only as blocks are used; block 0 (the pad
    block of batched decode attention) is zeroed here, others when first handed out.
    """
    caches = [
        torch.empty(2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device)
        for _ in range(num_layers)
    ]
    for c in caches:
        c[:, 0].zero_()
    return caches
