"""Micro-batching: requests that arrive close together run through the model as one batch.

A request joins the open group of requests with the same options (only those can share a forward pass, since
options such as `conf` or `topk` apply per call). A group is closed and run when it holds `max_batch` images, or
`max_wait` after its first request when a worker is free; while every worker is busy the group keeps filling, so
under load batches grow on their own instead of requests waiting behind one another. Each batch runs in one of
`workers` threads on the one shared model (the predictor never changes the model per call), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

RunBatch = Callable[[list[Any], dict[str, Any]], Sequence[Any]]


@dataclass
class _Job:
    items: list[Any]
    future: asyncio.Future


@dataclass
class _Group:
    options: dict[str, Any]
    jobs: list[_Job] = field(default_factory=list)
    size: int = 0
    full: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False


class MicroBatcher:
    """Queues `submit`ted requests and runs them through `run_batch(items, options)` in batches.

    `on_batch(size)` is called once per batch run (for metrics and tests). Create it inside a running event loop.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch: int = 16,
        max_wait_s: float = 0.0,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max(1, max_batch), max(0.0, max_wait_s)
        self.on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imagerec-batch")
        self._slots = asyncio.Semaphore(max(1, workers))
        self._open: dict[Hashable, _Group] = {}
        self._tasks: set[asyncio.Task] = set()
        self.batches = 0  # batches run so far
        self.requests = 0  # requests answered so far

    async def submit(self, items: list[Any], options: dict[str, Any]) -> list[Any]:
        """The results of `items` (in order), predicted with `options` in some batch."""
        key = tuple(sorted(options.items()))
        group = self._open.get(key)
        if group is None:
            group = self._open[key] = _Group(dict(options))
            task = asyncio.get_running_loop().create_task(self._run_group(key, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        job = _Job(list(items), asyncio.get_running_loop().create_future())
        group.jobs.append(job)
        group.size += len(job.items)
        if group.size >= self.max_batch:
            self._close(key, group)
        return await job.future

    def _close(self, key: Hashable, group: _Group) -> None:
        """No more requests join `group`; the next request with its options opens a new one."""
        if self._open.get(key) is group:
            del self._open[key]
        group.closed = True
        group.full.set()

    async def _run_group(self, key: Hashable, group: _Group) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(group.full.wait(), self.max_wait_s)
        async with self._slots:
            self._close(key, group)
            await self._run(group)

    async def _run(self, group: _Group) -> None:
        items = [item for job in group.jobs for item in job.items]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, items, group.options)
        except Exception as error:  # one bad request must not fail the others: run them one by one
            if len(group.jobs) == 1:
                _settle(group.jobs[0].future, error=error)
                return
            for job in group.jobs:
                await self._run(_Group(group.options, [job], len(job.items)))
            return
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(len(items))
        start = 0
        for job in group.jobs:
            _settle(job.future, result=list(results[start : start + len(job.items)]))
            start += len(job.items)
        self.requests += len(group.jobs)

    async def drain(self) -> None:
        """Run every queued request now and wait for all of them (graceful shutdown), then stop the threads."""
        for key, group in list(self._open.items()):
            self._close(key, group)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._executor.shutdown(wait=True)


def _settle(future: asyncio.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the client went away and its request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
