"""Tensor parallelism across machines: where the ranks of one TP group live.

``EngineConfig(tp=N, nnodes=M, master_addr=A, master_port=P)`` splits the ``N`` ranks evenly over
``M`` nodes, node ``k`` holding ranks ``k*N/M .. (k+1)*N/M - 1``. Node 0 runs the engine (rank 0,
the scheduler and, with ``vlkit serve``, the HTTP server) and spawns its own other ranks as
usual; every other node runs its ranks (``vlkit serve MODEL --tp N --nnodes M
--node-rank k --master-addr A``, :func:`vlkit.engine.workers.run_worker_node`), which starts its ranks and connects them to node 0.

Two channels, as on one machine: the ``torch.distributed`` group (gloo on CPU, NCCL on CUDA)
rendezvouses at ``tcp://A:P``, and each remote rank's step inputs come from rank 0 over a
``multiprocessing.connection`` socket on ``A:P+1``. That channel carries pickles, so both sides
authenticate with a shared secret (HMAC challenge, ``VLKIT_TP_SECRET`` on every node); a remote
rank gets everything it needs to build its runner (the runner class and its arguments) from
rank 0 over it, so the other nodes only need the checkpoint at the same path.

A node that dies closes its sockets: rank 0 sees the control connection at EOF before the next
step (or the collective fails) and raises :class:`~vlkit.engine.workers.WorkerDiedError`; the
remote ranks exit when rank 0's connection closes.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

__all__ = ["RemoteRank", "Topology", "accept_remote_ranks", "connect_to_node0", "free_port_pair", "secret"]

SECRET_ENV = "VLKIT_TP_SECRET"
logger = logging.getLogger("vlkit.engine")


@dataclass(frozen=True)
class Topology:
    """How one TP group of ``world_size`` ranks is spread over ``nnodes`` machines.

    Args:
        world_size: the TP degree (``EngineConfig.tp``).
        nnodes: machines the ranks are spread over; must divide ``world_size``.
        node_rank: this machine's index (0: the engine's).
        master_addr: node 0's address, reachable from every node.
        master_port: the process group's rendezvous port on node 0 (the control channel uses
            ``master_port + 1``).
    """

    world_size: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    #: the control channel's key; None: ``VLKIT_TP_SECRET`` (Ray-placed ranks get a fresh one)
    authkey: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.world_size % self.nnodes:
            raise ValueError(f"--nnodes {self.nnodes} must divide the tensor-parallel degree {self.world_size}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank must be in 0..{self.nnodes - 1}, got {self.node_rank}")
        if not 0 < self.master_port < 65535:
            raise ValueError(f"--master-port must be in 1..65534, got {self.master_port}")

    @classmethod
    def from_env(cls, world_size: int, nnodes: int | None = None, node_rank: int | None = None,
                 master_addr: str | None = None, master_port: int | None = None) -> Topology:
        """Arguments first, then torchrun's environment: ``NNODES`` / ``NODE_RANK``, or one
        process per rank (``WORLD_SIZE`` / ``RANK``), ``MASTER_ADDR`` / ``MASTER_PORT``."""
        env = os.environ
        per_rank = "MASTER_ADDR" in env  # WORLD_SIZE / RANK mean something only beside a master
        if nnodes is None:
            nnodes = int(env["NNODES"]) if "NNODES" in env else int(env.get("WORLD_SIZE", "1") if per_rank else 1)
        if node_rank is None:
            node_rank = int(env["NODE_RANK"]) if "NODE_RANK" in env else int(env.get("RANK", "0") if per_rank else 0)
        return cls(world_size=world_size, nnodes=nnodes, node_rank=node_rank,
                   master_addr=master_addr or env.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=int(master_port or env.get("MASTER_PORT", "29500")))

    @property
    def per_node(self) -> int:
        return self.world_size // self.nnodes

    def ranks_of(self, node: int) -> list[int]:
        return list(range(node * self.per_node, (node + 1) * self.per_node))

    @property
    def remote_ranks(self) -> list[int]:
        """The ranks node 0 waits for over the network."""
        return list(range(self.per_node, self.world_size))

    @property
    def init_method(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"

    @property
    def control_address(self) -> tuple[str, int]:
        return (self.master_addr, self.master_port + 1)


def free_port_pair() -> int:
    """A port ``p`` with ``p`` and ``p + 1`` both free here (rendezvous and control channel)."""
    for _ in range(64):
        with socket.socket() as a:
            a.bind(("", 0))
            port = a.getsockname()[1]
            if port >= 65534:
                continue
            try:
                with socket.socket() as b:
                    b.bind(("", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports for the tensor-parallel group")


def secret() -> bytes:
    value = os.environ.get(SECRET_ENV)
    if not value:
        raise ValueError(f"tensor parallelism across nodes needs a shared secret: set {SECRET_ENV} to the same "
                         "value on every node (it authenticates the control channel, which carries pickles)")
    return value.encode()


class ByValue:
    """A ``Connection`` that pickles by value. ``multiprocessing`` pickles tensors as handles to
    shared memory, which only a process on the same machine can open; across machines the bytes
    themselves must travel."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, obj: Any) -> None:
        self.conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def recv(self) -> Any:
        return pickle.loads(self.conn.recv_bytes())

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self.conn.poll(timeout)

    def fileno(self) -> int:
        return self.conn.fileno()

    def close(self) -> None:
        self.conn.close()


class RemoteRank:
    """A rank on another node, seen from rank 0 with the ``Process`` methods the engine uses."""

    def __init__(self, rank: int, conn: ByValue) -> None:
        self.rank, self.conn = rank, conn
        self.name = f"vlkit-tp-rank-{rank}-remote"
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))

    def is_alive(self) -> bool:
        """False once the connection is at EOF (the node died or its rank exited). Looks at the
        socket without reading from it, so it is safe from any thread."""
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    @property
    def exitcode(self) -> int | None:
        return None if self.is_alive() else -1

    def join(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or 0)
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def terminate(self) -> None:
        self.close()

    kill = terminate

    def close(self) -> None:
        for thing in (self.conn, self._sock):
            try:
                thing.close()
            except OSError:
                pass


def accept_remote_ranks(topology: Topology, init_method: str, runner_cls: type, runner_kwargs: dict[str, Any],
                        timeout: float) -> list[RemoteRank]:
    """On node 0: wait for every remote rank to connect and hand each what it needs to start."""
    want = set(topology.remote_ranks)
    got: dict[int, RemoteRank] = {}
    listener = Listener(topology.control_address, authkey=topology.authkey or secret())
    listener._listener._socket.settimeout(timeout)  # accept() would otherwise wait forever
    try:
        while want - got.keys():
            try:
                conn = ByValue(listener.accept())
            except TimeoutError:
                missing = sorted(want - got.keys())
                raise TimeoutError(f"tensor-parallel ranks {missing} (other nodes) did not connect to "
                                   f"{topology.control_address[0]}:{topology.control_address[1]} in "
                                   f"{timeout:.0f}s") from None
            except Exception as exc:  # noqa: BLE001 - a peer without the secret: refuse it, keep waiting
                logger.warning("refused a tensor-parallel connection: %s", exc)
                continue
            kind, rank = conn.recv()
            if kind != "hello" or rank not in want or rank in got:
                conn.send(("refused", f"rank {rank!r} is not one this group waits for"))
                conn.close()
                continue
            conn.send(("init", init_method, runner_cls, runner_kwargs))
            got[rank] = RemoteRank(rank, conn)
    except BaseException:
        for r in got.values():
            r.close()
        raise
    finally:
        listener.close()
    return [got[r] for r in sorted(got)]


def connect_to_node0(rank: int, topology: Topology, key: bytes, connect_timeout: float) -> tuple[Any, ...]:
    """On another node: connect rank ``rank`` to node 0; returns ``(conn, init_method, runner_cls,
    runner_kwargs)``, what the rank needs to start."""
    deadline = time.monotonic() + connect_timeout
    while True:
        try:
            conn = ByValue(Client(topology.control_address, authkey=key))
            break
        except (ConnectionRefusedError, OSError):
            if time.monotonic() > deadline:
                raise SystemExit(f"vlkit: rank {rank}: node 0 at {topology.control_address} did not answer "
                                 f"in {connect_timeout:.0f}s") from None
            time.sleep(0.2)
    conn.send(("hello", rank))
    msg = conn.recv()
    if msg[0] != "init":
        raise SystemExit(f"vlkit: rank {rank}: node 0 refused it: {msg[1]}")
    return (conn, *msg[1:])
