"""Admission control and request batching in front of one generation engine.

Requests are *admitted* while fewer than ``max_concurrency + max_queue`` are in the system;
beyond that :meth:`Batcher.submit` raises :class:`QueueFull` at once (the HTTP layer answers
429), so memory and latency stay bounded however many clients connect.

Admitted requests wait in a FIFO queue. Worker threads (one per in-process model: a model
runs one batch at a time) take the oldest request and every other queued request that can
share its batch (same strategy and sampling settings), up to ``max_concurrency`` requests
running at once, and run them as one batch — a strategy issues one ``generate`` per turn for
the whole batch, which is what makes a CPU or a single GPU serve many clients.

A request whose client gave up (timeout) is *abandoned*: removed from the queue if it was
still waiting, otherwise its admission slot is released at once and its batch stops at the
next turn boundary when every request in it was abandoned (a turn in progress is not
interrupted; ``max_tokens`` bounds it).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("scoreops.serving")

__all__ = ["Batcher", "Job", "QueueFull"]

_ids = itertools.count()


class QueueFull(RuntimeError):
    """The server holds as many requests as it is configured to; try again later."""


@dataclass(eq=False)
class Job:
    """One admitted request. ``key`` decides which jobs may share a batch."""

    key: Hashable
    payload: Any
    future: Future = field(default_factory=Future)
    id: int = field(default_factory=lambda: next(_ids))
    abandoned: bool = False
    running: bool = False


class Batcher:
    """A bounded queue drained in batches by worker threads.

    Args:
        run_batch: called in a worker thread with a list of jobs sharing one key; it must set
            each job's future (a raised exception is set on the futures it left unset).
        max_concurrency: most jobs running at once (summed over workers).
        max_queue: most jobs waiting beyond those.
        workers: batches that may run at once.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Job]], None],
        *,
        max_concurrency: int,
        max_queue: int,
        workers: int = 1,
        name: str = "batcher",
    ) -> None:
        if max_concurrency < 1 or max_queue < 0 or workers < 1:
            raise ValueError("max_concurrency >= 1, max_queue >= 0 and workers >= 1 required")
        self._run_batch = run_batch
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._queue: deque[Job] = deque()
        self._running = 0  # admitted jobs in running batches that were not abandoned
        self._running_total = 0  # jobs in running batches, abandoned or not (compute bound)
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    # -- state --------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.max_concurrency + self.max_queue

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def running(self) -> int:
        with self._cond:
            return self._running

    @property
    def admitted(self) -> int:
        with self._cond:
            return len(self._queue) + self._running

    # -- client side --------------------------------------------------------------------------

    def submit(self, key: Hashable, payload: Any) -> Job:
        """Admit a job or raise :class:`QueueFull`."""
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._queue) + self._running >= self.capacity:
                raise QueueFull(
                    f"the server is at capacity ({self.max_concurrency} requests running, "
                    f"{self.max_queue} queued); retry later"
                )
            job = Job(key=key, payload=payload)
            self._queue.append(job)
            self._cond.notify()
            return job

    def abandon(self, job: Job) -> None:
        """The client gave up on ``job``: free its slot now."""
        with self._cond:
            if job.abandoned or job.future.done():
                return
            job.abandoned = True
            was_running = job.running
            if was_running:
                self._running -= 1
            else:
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
            self._cond.notify_all()
        if not was_running:
            job.future.cancel()

    def close(self) -> None:
        """Stop the workers after their current batch; queued jobs are failed."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            if not job.future.done():
                job.future.set_exception(QueueFull("the server is shutting down"))

    # -- worker side --------------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                room = self.max_concurrency - self._running_total
                if self._queue and room > 0:
                    break
                self._cond.wait()
            head = self._queue[0]
            batch = [j for j in self._queue if j.key == head.key][:room]
            for j in batch:
                self._queue.remove(j)
                j.running = True
            self._running += len(batch)
            self._running_total += len(batch)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except BaseException as exc:  # the batch failed: every job learns why
                if not isinstance(exc, Abandoned):
                    log.exception("batch of %d failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            finally:
                with self._cond:
                    for job in batch:
                        if not job.abandoned:
                            self._running -= 1
                        job.running = False
                        job.abandoned = True  # finished: a late abandon() is a no-op
                    self._running_total -= len(batch)
                    self._cond.notify_all()
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("the batch produced no result"))


class Abandoned(RuntimeError):
    """Every request of a batch was abandoned; the batch stopped early."""
