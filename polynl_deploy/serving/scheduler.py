"""Per-model admission and execution: a bounded number of admitted requests, inference on a thread
pool (never on the event loop), and optional dynamic batching along axis 0."""

import asyncio
import contextlib
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from polynl_deploy.serving.metrics import ServingMetrics
from polynl_deploy.serving.models import ServedModel

logger = logging.getLogger("polynl_deploy.serving")


class QueueFullError(Exception):
    """The model already has ``max_queue`` requests admitted."""


class ShuttingDownError(Exception):
    """The server stopped before the request ran."""


@dataclass(eq=False)
class _Job:
    feed: dict[str, np.ndarray]
    future: asyncio.Future

    @property
    def rows(self) -> int:
        """Axis-0 size (batching only: every input then has a dynamic first axis)."""
        return next(iter(self.feed.values())).shape[0]

    @property
    def signature(self) -> tuple:
        """Jobs with equal signatures can be concatenated along axis 0."""
        return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(self.feed.items()))


class ModelScheduler:
    """Runs one model's requests; ``submit`` from the event loop, ``start``/``stop`` with the app."""

    def __init__(self, model: ServedModel, executor: Executor, metrics: ServingMetrics, *, max_queue: int,
                 max_batch_size: int, max_delay_s: float, concurrency: int) -> None:
        self.model = model
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.batching = model.batchable and max_batch_size > 1
        self._executor = executor
        self._concurrency = concurrency
        self._admitted_gauge = metrics.admitted.labels(model.name)
        self._batch_sizes = metrics.batch_size.labels(model.name)
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._admitted = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._consumers: list[asyncio.Task] = []

    def start(self) -> None:
        self._consumers = [asyncio.create_task(self._consume(), name=f"polynl-{self.model.name}-{i}")
                           for i in range(self._concurrency)]

    @contextlib.contextmanager
    def admission(self):
        """One of ``max_queue`` places, held from before the request body is read until the answer;
        QueueFullError when none is free."""
        if self._admitted >= self.max_queue:
            raise QueueFullError(f"model {self.model.name!r} has {self._admitted} requests queued "
                                 f"(max_queue={self.max_queue}); retry later")
        self._set_admitted(self._admitted + 1)
        try:
            yield
        finally:
            self._set_admitted(self._admitted - 1)

    async def run(self, feed: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        """Outputs for ``feed`` (inside ``admission``); asyncio.TimeoutError after ``timeout_s``."""
        job = _Job(feed, asyncio.get_running_loop().create_future())
        self._jobs.put_nowait(job)
        self._arrived.set()
        return await asyncio.wait_for(job.future, timeout_s)

    async def stop(self, drain_timeout_s: float) -> None:
        """Wait up to ``drain_timeout_s`` for admitted requests, then stop and fail what is left."""
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except asyncio.TimeoutError:
            logger.warning("model %s: %d requests still running after %.0f s; stopping anyway",
                           self.model.name, self._admitted, drain_timeout_s)
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        while not self._jobs.empty():
            self._finish([self._jobs.get_nowait()], ShuttingDownError("the server is shutting down"))

    def _set_admitted(self, count: int) -> None:
        self._admitted = count
        self._admitted_gauge.set(count)
        if count:
            self._idle.clear()
        else:
            self._idle.set()

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._jobs.get()]
            try:
                if self.batching:
                    await self._gather_more(jobs)
                waiting = [job for job in jobs if not job.future.done()]
                for chunk in self._chunks(waiting) if self.batching else [[job] for job in waiting]:
                    results = await loop.run_in_executor(self._executor, self._execute, chunk)
                    for job, result in zip(chunk, results):
                        self._finish([job], result)
            except asyncio.CancelledError:
                self._finish(jobs, ShuttingDownError("the server is shutting down"))
                raise
            except Exception as exc:  # the executor refused work: fail these jobs, keep consuming
                logger.exception("model %s: scheduling failed", self.model.name)
                self._finish(jobs, exc)

    async def _gather_more(self, jobs: list[_Job]) -> None:
        """Add queued jobs until the batch is full or ``max_delay_s`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        rows = jobs[0].rows
        while rows < self.max_batch_size:
            if self._jobs.empty():
                self._arrived.clear()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    return
                continue
            job = self._jobs.get_nowait()
            jobs.append(job)
            rows += job.rows

    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Group compatible jobs, each chunk at most ``max_batch_size`` rows (a larger job runs alone)."""
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.signature, []).append(job)
        chunks = []
        for group in groups.values():
            chunk, rows = [], 0
            for job in group:
                if chunk and rows + job.rows > self.max_batch_size:
                    chunks.append(chunk)
                    chunk, rows = [], 0
                chunk.append(job)
                rows += job.rows
            chunks.append(chunk)
        return chunks

    def _execute(self, chunk: list[_Job]) -> list:
        """On a worker thread: outputs (or the exception) per job; a failing batch is retried job by job."""
        if len(chunk) > 1:
            try:
                return self._run_merged(chunk)
            except Exception:
                logger.warning("model %s: a batch of %d requests failed; running them one by one",
                               self.model.name, len(chunk), exc_info=True)
        results = []
        for job in chunk:
            try:
                results.append(self.model.runner.infer(job.feed))
                self._batch_sizes.observe(job.rows)
            except Exception as exc:
                results.append(exc)
        return results

    def _run_merged(self, chunk: list[_Job]) -> list[dict[str, np.ndarray]]:
        rows = [job.rows for job in chunk]
        merged = {name: np.concatenate([job.feed[name] for job in chunk]) for name in chunk[0].feed}
        outputs = self.model.runner.infer(merged)
        if any(array.ndim == 0 or array.shape[0] != sum(rows) for array in outputs.values()):
            raise ValueError(f"outputs are not batched along axis 0: {[a.shape for a in outputs.values()]}")
        self._batch_sizes.observe(sum(rows))
        bounds = np.cumsum(rows)[:-1]
        parts = {name: np.split(array, bounds) for name, array in outputs.items()}
        return [{name: pieces[i] for name, pieces in parts.items()} for i in range(len(chunk))]

    @staticmethod
    def _finish(jobs: list[_Job], result) -> None:
        for job in jobs:
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
