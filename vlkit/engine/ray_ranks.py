"""Tensor-parallel ranks as Ray actors (``EngineConfig.tp_backend="ray"``).

Without Ray, ranks ``1..N-1`` are processes the engine spawns on its own machine (or, with
``--nnodes``, processes on other machines started by hand). Under Ray each rank is an actor that
Ray places, so one TP group can span the machines of a Ray cluster: inside a Ray Serve replica
whose deployment reserves one bundle per rank (``placement_group_bundles``, as
:func:`vlkit.serve.ray.build_app` does for ``tp > 1``), rank ``k`` goes into bundle ``k`` of the
replica's placement group, on whichever node Ray put that bundle.

The actors join the group the way the ranks of other machines do (:mod:`vlkit.engine.cluster`):
each connects back to rank 0's control socket and the process group's TCP rendezvous at rank 0's
node address, so everything after start-up (step inputs by value, dead-rank detection,
``WorkerDiedError``) is the multi-node code path. The control channel's key is fresh per engine
and travels to the actors through Ray, so no shared secret needs setting. :func:`stop_ranks`
kills the actors when the engine closes.
"""

from __future__ import annotations

import os
from typing import Any

from vlkit.engine.cluster import Topology, free_port_pair

#: seconds an actor waits for rank 0's control socket
CONNECT_TIMEOUT_S = 600.0


class _RankActor:
    """One tensor-parallel rank; ``run`` holds it until rank 0 closes the group."""

    def run(self, rank: int, topology: Topology) -> int:
        from vlkit.engine.workers import _remote_rank_main

        _remote_rank_main(rank, topology, topology.authkey, CONNECT_TIMEOUT_S)
        return rank

    def pid(self) -> int:
        return os.getpid()


def start_ranks(world_size: int, cuda: bool = False) -> tuple[Topology, list[Any]]:
    """Start ranks ``1..world_size-1`` as Ray actors (in the running Ray, or the one at
    ``RAY_ADDRESS``, default ``auto``).

    Returns the :class:`Topology` rank 0 passes to its runner (one "node" per rank, rank 0's
    address as Ray sees it) and the actor handles. Inside a placement group (a Ray Serve
    replica's), rank ``k`` is placed in bundle ``k`` and asks for that bundle's CPUs and GPUs;
    elsewhere each rank asks for one CPU, or one GPU with ``cuda``."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
    topo = Topology(world_size=world_size, nnodes=world_size, master_addr=ray.util.get_node_ip_address(),
                    master_port=free_port_pair(), authkey=os.urandom(32))
    pg = ray.util.get_current_placement_group()
    group = os.urandom(4).hex()
    actors = []
    cls = ray.remote(_RankActor)
    for rank in range(1, world_size):
        opts: dict[str, Any] = {"num_cpus": 0 if cuda else 1, "num_gpus": 1 if cuda else 0, "max_restarts": 0,
                                "name": f"vlkit-tp-{group}-rank{rank}"}  # named: visible to `ray list actors`
        if pg is not None and rank < pg.bundle_count:
            bundle = pg.bundle_specs[rank]
            opts.update(num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                             placement_group_bundle_index=rank))
        actor = cls.options(**opts).remote()
        actor.run.remote(rank, topo)
        actors.append(actor)
    return topo, actors


def stop_ranks(actors: list[Any]) -> None:
    """Kill the rank actors (their loop has ended once rank 0 closed the group)."""
    try:
        import ray
    except ImportError:  # pragma: no cover
        return
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
