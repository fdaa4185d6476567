"""Admission control: how many requests run at once, how many may wait, and for how long.

A request is *admitted* while fewer than ``max_concurrency + max_queue`` are in the system;
beyond that :meth:`Admission.enter` raises :class:`QueueFull` at once (the HTTP layer answers
429), so memory and latency stay bounded however many clients connect.

Admitted requests beyond ``max_concurrency`` wait in FIFO order for a running slot, at most
``max_queue_wait`` seconds: past that they get :class:`QueueWaitExceeded` (also a 429, with
``Retry-After``), early, instead of running late into their deadline. The request timeout
starts when the request starts running, so it bounds service time, not queueing.

A running request holds its slot until :meth:`Slot.release` (idempotent). A waiter whose
client went away leaves the queue (its task is cancelled).

What runs in a slot is not this module's business: for the ``hf`` backend each running
request's rows join the continuous batch of :class:`scoreops.serving.decode.DecodeLoop`.
Everything here runs on the server's event loop (one thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

log = logging.getLogger("scoreops.serving")

__all__ = ["Admission", "QueueFull", "QueueWaitExceeded", "Slot"]


class QueueFull(RuntimeError):
    """The server holds as many requests as it is configured to; try again later."""


class QueueWaitExceeded(QueueFull):
    """The request waited ``max_queue_wait`` seconds without a running slot."""


class Slot:
    """A running slot; :meth:`release` frees it (once)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._admission._leave()


class Admission:
    """A bounded queue in front of ``max_concurrency`` running slots (event-loop only)."""

    def __init__(self, *, max_concurrency: int, max_queue: int,
                 max_queue_wait: float | None = None) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency >= 1 and max_queue >= 0 required")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.max_queue_wait = max_queue_wait
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def capacity(self) -> int:
        return self.max_concurrency + self.max_queue

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def close(self) -> None:
        self._closed = True
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(QueueFull("the server is shutting down"))

    async def enter(self, queue_wait: float | None = None) -> Slot:
        """Wait for a running slot; raise :class:`QueueFull` / :class:`QueueWaitExceeded`."""
        if self._closed:
            raise QueueFull("the server is shutting down")
        if self._running + len(self._waiters) >= self.capacity:
            raise QueueFull(f"the server is at capacity ({self.max_concurrency} requests running, "
                            f"{self.max_queue} queued); retry later")
        if self._running < self.max_concurrency and not self._waiters:
            self._running += 1
            return Slot(self)
        limit = self.max_queue_wait if queue_wait is None else queue_wait
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=limit)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return Slot(self)  # granted at the last moment
            self._drop(waiter)
            raise QueueWaitExceeded(
                f"no request slot became free within {limit:g} s ({self.max_concurrency} "
                f"running, {len(self._waiters)} waiting); retry later") from None
        except asyncio.CancelledError:  # the client went away while waiting
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._leave()  # it was granted a slot it will not use
            else:
                self._drop(waiter)
            raise
        return Slot(self)

    def _drop(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        if not waiter.done():
            waiter.cancel()

    def _leave(self) -> None:
        self._running -= 1
        while self._waiters and self._running < self.max_concurrency:
            w = self._waiters.popleft()
            if w.done():
                continue
            self._running += 1
            w.set_result(None)
