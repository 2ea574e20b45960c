"""The tensor-parallel group as the layers see it: rank, world size and the collectives.

Layers read the group through :func:`tp_rank` / :func:`tp_world_size` when they are built, and
call :func:`all_reduce` / :func:`gather_to_first` in ``forward``; with ``tp=1`` these are no-ops
and ``torch.distributed`` is never initialised. Every rank joins the group with :func:`init_tp`
(rank 0 in the engine process, the others in the workers of :mod:`vlkit.engine.workers`).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Seconds a collective may wait for a peer before failing (a peer that died mid-step).
COLLECTIVE_TIMEOUT_S = float(os.environ.get("VLKIT_TP_TIMEOUT", "120"))



@dataclass
class _TPState:
    rank: int = 0
    world_size: int = 1


_STATE = _TPState()


def tp_rank() -> int:
    """This process's tensor-parallel rank (0 without TP)."""
    return _STATE.rank


def tp_world_size() -> int:
    """The tensor-parallel degree (1 without TP)."""
    return _STATE.world_size


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over all ranks in place (no-op with ``tp=1``)."""
    if _STATE.world_size > 1:
        dist.all_reduce(x)
    return x


def gather_to_first(x: torch.Tensor, dim: int = -1) -> torch.Tensor | None:
    """Concatenate every rank's ``x`` along ``dim`` on rank 0; other ranks get ``None``."""
    if _STATE.world_size == 1:
        return x
    x = x.contiguous()
    if _STATE.rank == 0:
        parts = [torch.empty_like(x) for _ in range(_STATE.world_size)]
        dist.gather(x, parts, dst=0)
        return torch.cat(parts, dim=dim)
    dist.gather(x, None, dst=0)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_tp(rank: int, world_size: int, init_method: str, backend: str) -> None:
    """Join the tensor-parallel group (called by every rank, rank 0 included)."""
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    _STATE.rank, _STATE.world_size = rank, world_size


def destroy_tp() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass
    _STATE.rank, _STATE.world_size = 0, 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


