"""Admission and batching: how many decoded images the server holds, and how requests share the model.

``ImageSlots`` caps the images held at once across all requests (decoding, queued or inside the model), so memory
stays bounded whatever the number of concurrent clients; a request that cannot get its slots in time gets 503.
``MicroBatcher`` groups concurrent requests: handlers put their inputs on an asyncio queue; one worker groups
what is pending (up to ``max_batch`` inputs, waiting at most ``max_wait_s`` after the first) and runs the model
in a single dedicated thread, so the event loop keeps accepting requests while the model computes. After each
model run freed memory is handed back to the OS (``malloc_trim``), else a burst of large images leaves the
process gigabytes bigger for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from btoks.encode import EncodeOptions, encode_items
from btoks.serve.protocol import ApiError

if TYPE_CHECKING:
    from btoks.model import BToksModel

log = logging.getLogger(__name__)
T = TypeVar("T")


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None  # glibc only


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc keeps large freed blocks in its arenas otherwise)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _then_release(fn: Callable[[], T]) -> T:
    try:
        return fn()
    finally:
        release_memory()


class ImageSlots:
    """A server-wide cap on decoded images held at once; a request holds one slot per image it carries."""

    def __init__(self, capacity: int, wait_s: float = 30.0) -> None:
        self.capacity, self.wait_s, self.used = capacity, wait_s, 0
        self._cond: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        """Hold ``n`` slots for the block; 503 (retry later) when they do not free up within ``wait_s``."""
        if n <= 0:
            yield
            return
        if n > self.capacity:
            raise ApiError(413, f"{n} images in one request; this server holds at most {self.capacity} at once",
                           "request_too_large")
        if self._cond is None:
            self._cond = asyncio.Condition()
        cond = self._cond
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self.used + n <= self.capacity), self.wait_s)
            except TimeoutError:
                raise ApiError(503, "server busy: too many images in flight, retry later", "server_busy",
                               {"Retry-After": "1"}) from None
            self.used += n
        try:
            yield
        finally:
            async with cond:
                self.used -= n
                cond.notify_all()


@dataclass
class _Job:
    inputs: list[Any]
    future: asyncio.Future[tuple[np.ndarray, list[int]]]


class MicroBatcher:
    """Groups concurrent requests into model batches; the model runs in one thread (it is not re-entrant)."""

    def __init__(
        self, model: BToksModel, max_batch: int, max_wait_s: float, max_queue: int, options: EncodeOptions
    ) -> None:
        self.model, self.max_batch, self.max_wait_s, self.max_queue = model, max_batch, max_wait_s, max_queue
        self.options = options
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="btoks-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        """Model runs so far (a group of concurrent requests counts once), so tests/metrics see batching."""

    def _ensure_started(self) -> asyncio.Queue[_Job]:
        """Start lazily in the running loop (works under uvicorn and with transports that skip lifespan)."""
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._task = asyncio.get_running_loop().create_task(self._worker())
        return self._queue

    async def submit(self, inputs: list[Any]) -> tuple[np.ndarray, list[int]]:
        """Embeddings (n × d) and token counts for ``inputs``; 422 names the failing input's index."""
        queue = self._ensure_started()
        future: asyncio.Future[tuple[np.ndarray, list[int]]] = asyncio.get_running_loop().create_future()
        try:
            queue.put_nowait(_Job(inputs, future))
        except asyncio.QueueFull:
            raise ApiError(503, "server busy: too many queued requests, retry later", "server_busy") from None
        return await future

    async def _collect(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await queue.get()]
        size = len(jobs[0].inputs)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            size += len(job.inputs)
        return [j for j in jobs if not j.future.done()]  # drop requests whose client went away

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect(self._queue)
            if not jobs:
                continue
            flat = [x for j in jobs for x in j.inputs]
            run = partial(
                encode_items,
                self.model,
                flat,
                batch_size=self.max_batch,
                show_progress_bar=False,
                on_error="skip",
                options=self.options,
            )
            self.batches += 1
            try:
                result = await loop.run_in_executor(self._executor, _then_release, run)
            except Exception as e:  # a model failure fails this group, not the server
                log.exception("embedding batch failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(
                            ApiError(500, f"embedding failed: {type(e).__name__}", "server_error")
                        )
                continue
            emb = result.embeddings.numpy()
            offset = 0
            for j in jobs:
                n = len(j.inputs)
                errs = sorted((i - offset, e) for i, e in result.errors.items() if offset <= i < offset + n)
                if not j.future.done():
                    if errs:
                        j.future.set_exception(ApiError(422, f"input[{errs[0][0]}]: {errs[0][1].detail}"))
                    else:
                        j.future.set_result((emb[offset : offset + n], result.tokens[offset : offset + n]))
                offset += n

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(ApiError(503, "server shutting down", "server_busy"))
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["ImageSlots", "MicroBatcher", "release_memory"]
