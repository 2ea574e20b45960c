"""The step loop: one background thread drives ``LLMEngine.step()`` for every consumer.

The pipeline (blocking and streaming), ``chat`` and the server all submit requests here and
receive the engine's incremental outputs through a callback run on the loop thread. An engine
failure is delivered to every waiting request as an error; it never hangs a caller.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("vlkit.loop")

Callback = Callable[[Any, BaseException | None], None]


class EngineLoop:
    """Runs ``engine.step()`` on a daemon thread while requests are in flight."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._callbacks: dict[Any, Callback] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._dead: BaseException | None = None
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="vlkit-engine-loop", daemon=True)
        self._thread.start()

    def new_id(self) -> str:
        return f"req-{next(self._ids)}"

    def submit(self, request_id: Any, callback: Callback, **request: Any) -> None:
        """Add a request; ``callback(output, error)`` is called for each output (and on failure).

        Validation errors from the engine (prompt too long...) raise here, in the caller.
        """
        with self._cond:
            if self._dead is not None:
                raise RuntimeError(f"the engine has failed: {self._dead}") from self._dead
            if self._closed:
                raise RuntimeError("the pipeline is closed")
            self.engine.add_request(request_id=request_id, **request)
            self._callbacks[request_id] = callback
            self._cond.notify_all()

    def abort(self, request_id: Any) -> None:
        """Stop a request and free its KV blocks now; its callback gets no more outputs."""
        with self._cond:
            if self._callbacks.pop(request_id, None) is not None:
                self.engine.abort(request_id)

    @property
    def num_in_flight(self) -> int:
        with self._cond:
            return len(self._callbacks)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._callbacks:
                    self._cond.wait()
                if self._closed:
                    return
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
                return
            for cb, out in deliveries:
                try:
                    cb(out, None)
                except Exception:  # noqa: BLE001 - a consumer's bug must not stop the loop
                    logger.exception("output callback failed")

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
