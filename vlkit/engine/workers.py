"""Tensor-parallel worker processes (the group itself and its collectives: :mod:`vlkit.layers.tp`).

With ``EngineConfig(tp=N)`` the engine process is rank 0: it schedules, samples and sends each
step's inputs to ``N - 1`` spawned worker processes (ranks ``1..N-1``). Every rank holds a
``1/N`` slice of the weights and of the KV cache and runs the same forward; the parallel layers
in :mod:`vlkit.layers` all-reduce or gather through the default ``torch.distributed`` group
(gloo on CPU, NCCL on CUDA).

Step inputs travel to workers over one ``multiprocessing`` pipe per worker, so an idle worker
waits on its pipe, not on a collective that could time out. A worker that dies is noticed by
rank 0 before the next step (``is_alive``) or by the collective that fails; both raise
:class:`WorkerDiedError` in the caller. Workers exit when their pipe closes, so an engine that is
garbage collected or an interpreter that exits never leaves them behind. Ranks on other machines
(``EngineConfig.nnodes > 1``) connect over a socket instead of a pipe: :mod:`vlkit.engine.cluster`.

Layers read the group through :func:`tp_rank` / :func:`tp_world_size` when they are built, and
call :func:`all_reduce` / :func:`gather_to_first` in ``forward``; with ``tp=1`` these are no-ops
and ``torch.distributed`` is never initialised.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
import traceback
import weakref
from typing import Any

import torch
import torch.multiprocessing as mp

from vlkit.layers.tp import backend_for, destroy_tp, free_port, init_tp

# Seconds rank 0 waits for workers to load their weights.
STARTUP_TIMEOUT_S = float(os.environ.get("VLKIT_TP_STARTUP_TIMEOUT", "600"))


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker process exited or failed."""


def _worker_main(rank: int, world_size: int, init_method: str, runner_cls: type, runner_kwargs: dict[str, Any],
                 conn) -> None:
    """Entry point of a spawned worker: build the runner, then execute steps until told to stop."""
    runner_kwargs = {**runner_kwargs, "rank": rank}
    try:
        device = torch.device(runner_kwargs["device"])
        if device.type == "cuda":  # one GPU per rank of this node
            device = torch.device("cuda", rank % max(torch.cuda.device_count(), 1))
            torch.cuda.set_device(device)
            runner_kwargs = {**runner_kwargs, "device": str(device)}
        if runner_kwargs.get("num_threads"):
            torch.set_num_threads(runner_kwargs["num_threads"])
        init_tp(rank, world_size, init_method, backend_for(device))
        runner = runner_cls(**runner_kwargs)
        conn.send(("loaded", runner.memory_report()))
        while True:
            msg = conn.recv()
            kind = msg[0]
            if kind == "stop":
                break
            if kind == "kv_cache":
                runner.allocate_kv_cache(msg[1])
                conn.send(("ready", None))
            elif kind == "step":
                runner.execute(msg[1])
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except Exception:
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:
            pass
    finally:
        destroy_tp()
        try:
            conn.close()
        except Exception:
            pass


@contextlib.contextmanager
def _without_main_reimport():
    """Spawned workers normally re-run the parent's ``__main__`` script; a script without an
    ``if __name__ == "__main__"`` guard would then build engines recursively. Workers need
    nothing from ``__main__`` (their target and arguments live in vlkit), so hide it while
    starting them."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        for k in saved:
            if k == "__spec__":
                main.__spec__ = None
            else:
                del main.__dict__[k]
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def _shutdown(procs: list, conns: list) -> None:
    for c in conns:
        try:
            c.send(("stop",))
        except Exception:
            pass
    for p in procs:
        p.join(timeout=10)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    for c in conns:
        try:
            c.close()
        except Exception:
            pass
    destroy_tp()


class TPWorkers:
    """The ``tp - 1`` worker processes of one engine, seen from rank 0.

    Built by :class:`vlkit.engine.runner.ModelRunner` on rank 0: ``start`` spawns the workers
    and joins the process group, ``send_step`` hands each worker the step's inputs,
    ``close`` stops them (also run at interpreter exit and when this object is collected).
    """

    def __init__(self, world_size: int, runner_cls: type, runner_kwargs: dict[str, Any], topology: Any = None):
        self.world_size = world_size
        device = torch.device(runner_kwargs["device"])
        multinode = topology is not None and topology.nnodes > 1
        init_method = topology.init_method if multinode else f"tcp://127.0.0.1:{free_port()}"
        local = topology.ranks_of(0) if multinode else list(range(world_size))
        ctx = mp.get_context("spawn")
        self._procs: list = []
        self._conns: list = []
        for rank in local[1:]:
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(rank, world_size, init_method, runner_cls, runner_kwargs, child),
                daemon=True,
                name=f"vlkit-tp-worker-{rank}",
            )
            with _without_main_reimport():
                p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns)
        atexit.register(self._finalizer)
        try:
            if multinode:  # the other nodes' ranks connect here (vlkit/engine/cluster.py)
                from vlkit.engine.cluster import accept_remote_ranks

                for remote in accept_remote_ranks(topology, init_method, runner_cls, runner_kwargs, STARTUP_TIMEOUT_S):
                    self._procs.append(remote)
                    self._conns.append(remote.conn)
            init_tp(0, world_size, init_method, backend_for(device))
        except Exception as e:
            self.close()
            raise WorkerDiedError(f"tensor-parallel group failed to start: {e}") from e

    def wait(self, expected: str, timeout: float = STARTUP_TIMEOUT_S) -> list[Any]:
        """Wait for every worker's ``expected`` message; raise if one fails or dies."""
        out = []
        for rank, (p, c) in enumerate(zip(self._procs, self._conns), start=1):
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
            while not c.poll(0.1):
                if not p.is_alive():
                    self.close()
                    raise WorkerDiedError(f"tensor-parallel worker {rank} exited (code {p.exitcode})")
                if datetime.datetime.now() > deadline:
                    self.close()
                    raise WorkerDiedError(f"tensor-parallel worker {rank} did not answer in {timeout:.0f}s")
            try:
                kind, payload = c.recv()
            except EOFError:
                self.close()
                raise WorkerDiedError(f"tensor-parallel worker {rank} exited") from None
            if kind == "error":
                self.close()
                raise WorkerDiedError(f"tensor-parallel worker {rank} failed:\n{payload}")
            if kind != expected:
                self.close()
                raise WorkerDiedError(f"tensor-parallel worker {rank} sent {kind!r}, expected {expected!r}")
            out.append(payload)
        return out

    def send(self, *msg: Any) -> None:
        self.check_alive()
        for rank, c in enumerate(self._conns, start=1):
            try:
                c.send(msg)
            except (BrokenPipeError, OSError) as e:
                self.close()
                raise WorkerDiedError(f"tensor-parallel worker {rank} is gone: {e}") from e

    def dead(self) -> list[tuple[int, int | None]]:
        """``(rank, exit code)`` of every worker process that has exited. Safe from any thread:
        it only looks at the processes, never at the pipes the engine thread uses."""
        return [(rank, p.exitcode) for rank, p in enumerate(self._procs, start=1) if not p.is_alive()]

    def check_alive(self) -> None:
        for rank, (p, c) in enumerate(zip(self._procs, self._conns), start=1):
            if not p.is_alive():
                self.close()
                raise WorkerDiedError(f"tensor-parallel worker {rank} exited (code {p.exitcode})")
            if c.poll():  # a worker only speaks unasked when it failed
                try:
                    payload = c.recv()[1]
                except EOFError:
                    payload = "pipe closed"
                self.close()
                raise WorkerDiedError(f"tensor-parallel worker {rank} failed:\n{payload}")

    @property
    def processes(self) -> list:
        return list(self._procs)

    def close(self) -> None:
        self._finalizer()


def _remote_rank_main(rank: int, topology: Any, key: bytes, connect_timeout: float) -> None:
    from vlkit.engine.cluster import connect_to_node0

    conn, init_method, runner_cls, runner_kwargs = connect_to_node0(rank, topology, key, connect_timeout)
    _worker_main(rank, topology.world_size, init_method, runner_cls, runner_kwargs, conn)


def run_worker_node(topology: Any, connect_timeout: float = 600.0) -> int:
    """On node ``k > 0`` of a multi-node TP group (:class:`vlkit.engine.cluster.Topology`): start
    this node's ranks, connect them to node 0, and wait until they exit (when node 0's engine
    stops or goes away). Returns 0, or 1 if a rank failed."""
    from vlkit.engine.cluster import secret

    if topology.node_rank == 0:
        raise ValueError("node 0 runs the engine itself, not run_worker_node")
    key = secret()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_remote_rank_main, args=(rank, topology, key, connect_timeout),
                         name=f"vlkit-tp-rank-{rank}", daemon=True) for rank in topology.ranks_of(topology.node_rank)]
    with _without_main_reimport():
        for p in procs:
            p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
    return 0 if all(p.exitcode == 0 for p in procs) else 1
