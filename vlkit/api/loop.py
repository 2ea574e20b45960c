"""The step loop: one background thread does all of a pipeline's torch work.

It drives ``LLMEngine.step()`` for every consumer (the pipeline, ``stream_infer``, ``chat``,
the server), delivering incremental outputs through a callback run on the loop thread, and it
also runs the other torch work handed to it with :meth:`EngineLoop.call` — building the engine
and the vision model, encoding images, ``get_logits`` — between steps.

Why one thread: once two threads both run parallel torch ops, OpenMP (libgomp) stops its
worker threads from spinning, and every parallel op gets about 25 % slower on a CPU (measured on
the W1 decode step: 18 ms on one thread, 21-22 ms with vision encoding on another). An engine
failure is delivered to every waiting request as an error; it never hangs a caller.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from vlkit.api.malloc import tune_malloc

if TYPE_CHECKING:  # pragma: no cover
    from vlkit.engine.request import Request

logger = logging.getLogger("vlkit.api.loop")

Callback = Callable[[Any, BaseException | None], None]


class EngineLoop:
    """A daemon thread that runs queued calls and ``engine.step()`` while requests are in flight.

    ``engine`` may be set after construction (build it with :meth:`call` so that it is made on
    the loop thread).
    """

    def __init__(self, engine: Any = None) -> None:
        self.engine = engine
        self._callbacks: dict[Any, Callback] = {}
        self._tasks: deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Future[Any]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._dead: BaseException | None = None
        self._ids = itertools.count()
        tune_malloc()  # before the thread exists, so that it shares the main heap (vlkit/malloc.py)
        self._thread = threading.Thread(target=self._run, name="vlkit-engine-loop", daemon=True)
        self._thread.start()

    def new_id(self) -> str:
        return f"req-{next(self._ids)}"

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the loop thread (between steps) and return its result.

        Exceptions propagate to the caller. Called from the loop thread itself, runs at once.
        """
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        fut: Future[Any] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            self._tasks.append((fn, args, kwargs, fut))
            self._cond.notify_all()
        return fut.result()

    def submit(self, request: Request, callback: Callback) -> str:
        """Add a request (given a new id when it has none) and return its id;
        ``callback(output, error)`` is called for each output (and on failure).

        Validation errors from the engine (prompt too long...) raise here, in the caller.
        """
        if not request.request_id:
            request.request_id = self.new_id()
        with self._cond:
            if self._dead is not None:
                raise RuntimeError(f"the engine has failed: {self._dead}") from self._dead
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            self.engine.add(request)
            self._callbacks[request.request_id] = callback
            self._cond.notify_all()
        return request.request_id

    def abort(self, request_id: Any) -> None:
        """Stop a request and free its KV blocks now; its callback gets no more outputs."""
        with self._cond:
            if self._callbacks.pop(request_id, None) is not None:
                self.engine.abort(request_id)

    def failure(self) -> str | None:
        """Why the loop cannot run requests any more (an engine step failed, the thread is gone,
        it was closed), or ``None``."""
        with self._cond:
            if self._dead is not None:
                return f"the engine failed: {type(self._dead).__name__}: {self._dead}"
            if self._closed:
                return "the pipeline is closed"
        if not self._thread.is_alive():
            return "the engine loop thread has exited"
        return None

    @property
    def num_in_flight(self) -> int:
        with self._cond:
            return len(self._callbacks)

    def _run_tasks(self) -> None:
        while True:
            with self._cond:
                if not self._tasks:
                    return
                fn, args, kwargs, fut = self._tasks.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                fut.set_exception(exc)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._callbacks and not self._tasks:
                    self._cond.wait()
                if self._closed:
                    return
            self._run_tasks()
            with self._cond:
                if not self._callbacks:
                    continue
            try:
                with self._cond:
                    outputs = self.engine.step()
                    deliveries = []
                    for out in outputs:
                        cb = self._callbacks.get(out.request_id)
                        if cb is None:
                            continue
                        if out.finished:
                            del self._callbacks[out.request_id]
                        deliveries.append((cb, out))
            except BaseException as exc:  # noqa: BLE001 - surface any engine failure to callers
                logger.exception("engine step failed")
                with self._cond:
                    self._dead = exc
                    pending = list(self._callbacks.values())
                    self._callbacks.clear()
                for cb in pending:
                    cb(None, exc)
                self._fail_tasks(exc)
                return
            for cb, out in deliveries:
                try:
                    cb(out, None)
                except Exception:  # noqa: BLE001 - a consumer's bug must not stop the loop
                    logger.exception("output callback failed")

    def _fail_tasks(self, exc: BaseException) -> None:
        with self._cond:
            tasks, self._tasks = list(self._tasks), deque()
        for *_, fut in tasks:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError(f"the engine loop stopped: {exc}"))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._callbacks.values())
            self._callbacks.clear()
            self._cond.notify_all()
        for cb in pending:
            cb(None, RuntimeError("the pipeline was closed"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        self._fail_tasks(RuntimeError("the pipeline was closed"))
