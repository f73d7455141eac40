"""A supervised pool of decode worker processes: some decord failures never return (a loop
holding the GIL), so batch decoding runs in workers that are killed when they overrun a
timeout, and die with their parent."""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from stages.decode.backends import decode_video
from stages.decode.decord_backend import silence_native_stderr
from stages.decode.video import DecodedVideo, DecodeError, one_line
from stages.drills import decode_drills
from stages.processes import die_with_parent

log = logging.getLogger("stages.decode")

# A fresh worker must import numpy/decord; a generous bound, independent of timeout_s.
_WORKER_BOOT_TIMEOUT_S = 120.0


@dataclass
class DecodeRequest:
    key: str  # e.g. video_id
    path: str
    fps: float
    max_frames: int
    short_side: int | None
    window: int | None
    stride: int


@dataclass
class DecodeFailure:
    key: str
    error: str  # one-line human message


def _decode_request(request: DecodeRequest) -> DecodedVideo | DecodeFailure:
    try:
        return decode_video(
            request.path, request.fps, request.max_frames, request.short_side, request.window, request.stride
        )
    except DecodeError as error:
        return DecodeFailure(request.key, str(error))
    except Exception as error:  # a worker must survive any one video
        return DecodeFailure(request.key, f"{request.path}: unexpected {type(error).__name__}: {one_line(str(error))}")


def _worker_main(conn: multiprocessing.connection.Connection, parent_pid: int) -> None:
    """Worker process: decode requests one at a time until told to stop.

    The kernel kills it if the parent dies, even mid-hang (the signal follows the parent
    *thread* that started it, which is why only the pool's dispatcher thread starts workers).
    """
    die_with_parent(parent_pid)
    try:
        # Own process group, so a kill also takes any ffmpeg child with it.
        os.setpgrp()
    except OSError:
        pass
    silence_native_stderr()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # parent is gone
        if request is None:
            return
        decode_drills(request.path)
        result = _decode_request(request)
        try:
            conn.send(("result", result))
        except (BrokenPipeError, OSError):
            return


_END: Any = object()  # end-of-requests marker


class _Job:
    """One imap call: its results, keyed by submission order."""

    def __init__(self) -> None:
        self.results: dict[int, tuple[DecodeRequest, DecodedVideo | DecodeFailure]] = {}
        self.cancelled = False
        self.error: BaseException | None = None


@dataclass
class _Worker:
    process: Any  # multiprocessing SpawnProcess
    conn: multiprocessing.connection.Connection
    deadline: float  # monotonic; boot deadline until ready, then the task's
    ready: bool = False
    task: tuple[_Job, int, DecodeRequest] | None = None


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class DecodePool:
    """`workers` spawned processes, each decoding one request at a time.

    A request that runs past `timeout_s` has its worker killed (with its process
    group, so ffmpeg children die too) and replaced; it yields DecodeFailure('...
    timed out after Ns'). A worker that dies (segfault) yields DecodeFailure for its
    request and is replaced. A dispatcher thread feeds the workers, so decoding
    continues while the consumer works on earlier results. Reusable across imap
    calls, also concurrent ones from several threads; closed by close(), the context
    manager, or at interpreter exit.

    Uses the 'spawn' start method: scripts that create a pool need the usual
    ``if __name__ == "__main__":`` guard. Workers leave their parent's process group
    (terminal Ctrl-C reaches only the parent, which then closes the pool); on Linux
    the kernel kills them if the parent dies, even mid-hang.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 300.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if multiprocessing.current_process().daemon:
            # multiprocessing refuses children here; say why instead of failing in the dispatcher.
            raise RuntimeError(
                "decode workers cannot start inside a daemonic process; on a Dask worker start it with "
                "DASK_DISTRIBUTED__WORKER__DAEMON=False (dask config distributed.worker.daemon: false)"
            )
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._pending: deque[tuple[_Job, int, DecodeRequest]] = deque()  # guarded by _cond
        self._jobs: set[_Job] = set()  # guarded by _cond
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None
        self._wake_reader, self._wake_writer = self._context.Pipe(duplex=False)
        self._wake_lock = threading.Lock()
        self._pool: list[_Worker] = []  # owned by the dispatcher thread, which starts every worker
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="prvr-decode-dispatch", daemon=True)
        self._dispatcher.start()
        atexit.register(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring; they change on replacement)."""
        return [worker.process.pid for worker in list(self._pool)]

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- consumer side

    def imap(
        self, requests: Iterable[DecodeRequest], prefetch: int = 4
    ) -> Iterator[tuple[DecodeRequest, DecodedVideo | DecodeFailure]]:
        """Yield (request, result) in request order, with at most `prefetch` requests
        submitted but not yet yielded (so at most that many decoded results wait in
        memory). Decoding of later requests overlaps the consumer's work."""
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if self._closed or self._closing:
            raise RuntimeError("DecodePool is closed")
        return self._ordered_results(iter(requests), prefetch)

    def _ordered_results(
        self, requests: Iterator[DecodeRequest], prefetch: int
    ) -> Iterator[tuple[DecodeRequest, DecodedVideo | DecodeFailure]]:
        job = _Job()
        with self._cond:
            self._jobs.add(job)
        submitted = 0
        next_seq = 0
        exhausted = False

        def submit_next() -> None:
            nonlocal submitted, exhausted
            request = next(requests, _END)
            if request is _END:
                exhausted = True
            else:
                self._submit(job, submitted, request)
                submitted += 1

        try:
            while True:
                while not exhausted and submitted - next_seq < prefetch:
                    submit_next()
                if next_seq == submitted:
                    return
                request, result = self._take(job, next_seq)
                next_seq += 1
                if not exhausted:  # refill before handing the result out, so the next decode overlaps
                    submit_next()
                yield request, result
        finally:
            with self._cond:
                job.cancelled = True
                self._jobs.discard(job)
                self._pending = deque(item for item in self._pending if item[0] is not job)
            self._wake()

    def _submit(self, job: _Job, seq: int, request: DecodeRequest) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("DecodePool is closed")
            self._pending.append((job, seq, request))
        self._wake()

    def _take(self, job: _Job, seq: int) -> tuple[DecodeRequest, DecodedVideo | DecodeFailure]:
        with self._cond:
            while seq not in job.results:
                if job.error is not None:
                    raise RuntimeError("decode pool stopped") from job.error
                if self._failure is not None:
                    raise RuntimeError("decode pool dispatcher failed") from self._failure
                if self._closing:
                    raise RuntimeError("DecodePool was closed while results were pending")
                self._cond.wait(timeout=1.0)
            return job.results.pop(seq)

    def _wake(self) -> None:
        with self._wake_lock:
            if not self._wake_writer.closed:
                self._wake_writer.send_bytes(b"")

    # ---- dispatcher side (runs in the dispatcher thread; owns self._pool)

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main, args=(child_end, os.getpid()), name="prvr-decode-worker", daemon=True
        )
        process.start()
        child_end.close()
        return _Worker(process=process, conn=parent_end, deadline=time.monotonic() + _WORKER_BOOT_TIMEOUT_S)

    def _dispatch_loop(self) -> None:
        try:
            self._pool = [self._start_worker() for _ in range(self.workers)]
            while True:
                with self._cond:
                    if self._closing:
                        return
                    self._assign_locked()
                waitables: list[Any] = [self._wake_reader]
                for worker in self._pool:
                    waitables += [worker.conn, worker.process.sentinel]
                timeout = max(0.0, min(w.deadline for w in self._pool) - time.monotonic())
                ready = multiprocessing.connection.wait(waitables, timeout=min(timeout, 3600.0))
                while self._wake_reader.poll():
                    self._wake_reader.recv_bytes()
                for position, worker in enumerate(self._pool):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        self._pool[position] = self._collect(worker)
                now = time.monotonic()
                for position, worker in enumerate(self._pool):
                    if worker.deadline <= now:
                        self._pool[position] = self._expire(worker)
        except BaseException as error:
            log.exception("decode pool dispatcher failed")
            with self._cond:
                self._failure = error
                self._cond.notify_all()

    def _assign_locked(self) -> None:
        for worker in self._pool:
            if not self._pending:
                return
            if worker.ready and worker.task is None:
                job, seq, request = self._pending.popleft()
                worker.task = (job, seq, request)
                worker.deadline = time.monotonic() + self.timeout_s
                try:
                    worker.conn.send(request)
                except OSError:
                    pass  # it just died; its sentinel reports that with this task

    def _deliver(self, job: _Job, seq: int, request: DecodeRequest, result: DecodedVideo | DecodeFailure) -> None:
        with self._cond:
            if not job.cancelled:  # an abandoned imap's late results are dropped
                job.results[seq] = (request, result)
                self._cond.notify_all()

    def _collect(self, worker: _Worker) -> _Worker:
        """Read a worker's message, or replace it if it died."""
        unreadable: str | None = None
        try:
            message = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            message = None  # it died, perhaps halfway through sending
        except Exception as error:  # e.g. a result that does not unpickle
            message = None
            unreadable = f"its result could not be received ({type(error).__name__}: {one_line(str(error))})"
        if message is not None:
            kind, payload = message
            if kind == "ready":
                worker.ready = True
                worker.deadline = math.inf
            elif worker.task is not None:
                job, seq, request = worker.task
                worker.task = None
                worker.deadline = math.inf
                self._deliver(job, seq, request, payload)
            if worker.process.is_alive():
                return worker
        if unreadable is None:
            worker.process.join(timeout=5)
        if worker.process.is_alive():  # unusable: no message, or a broken pipe
            self._kill(worker)
        cause = unreadable or f"decoder process died ({_exit_description(worker.process.exitcode)})"
        if not worker.ready:
            raise RuntimeError(f"decode worker failed to start: {cause}")
        if worker.task is not None:
            job, seq, request = worker.task
            log.warning("decode worker failed on %s: %s; replacing it", request.path, cause)
            self._deliver(job, seq, request, DecodeFailure(request.key, f"{request.path}: {cause}"))
        worker.conn.close()
        return self._start_worker()

    def _expire(self, worker: _Worker) -> _Worker:
        if not worker.ready:
            self._kill(worker)
            raise RuntimeError(f"decode worker did not start within {_WORKER_BOOT_TIMEOUT_S:g}s")
        self._kill(worker)
        if worker.task is not None:
            job, seq, request = worker.task
            log.warning("decoding %s timed out after %gs; killed its worker", request.path, self.timeout_s)
            failure = DecodeFailure(request.key, f"{request.path}: decoding timed out after {self.timeout_s:g}s")
            self._deliver(job, seq, request, failure)
        return self._start_worker()

    @staticmethod
    def _kill(worker: _Worker) -> None:
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)  # the worker leads its own group
        except (ProcessLookupError, PermissionError):
            pass  # not yet its own group leader, or already gone
        worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()

    # ---- shutdown

    def close(self) -> None:
        """Stop the workers (idle ones politely, busy ones by kill). Idempotent."""
        if self._closed:
            return
        with self._cond:
            self._closing = True
            for job in self._jobs:
                job.error = RuntimeError("DecodePool closed")
            self._cond.notify_all()
        self._wake()
        if self._dispatcher.is_alive() and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout=30)
        idle = []
        for worker in self._pool:
            if worker.ready and worker.task is None and worker.process.is_alive():
                try:
                    worker.conn.send(None)
                    idle.append(worker)
                    continue
                except OSError:
                    pass
            self._kill(worker)  # busy or booting: its work is no longer wanted
        for worker in idle:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                self._kill(worker)
            else:
                worker.conn.close()
        with self._wake_lock:
            self._wake_writer.close()
        self._wake_reader.close()
        self._closed = True
        atexit.unregister(self.close)


_shared_pool: DecodePool | None = None
_shared_pool_lock = threading.Lock()


def get_decode_pool(workers: int, timeout_s: float) -> DecodePool:
    """Process-wide pool reused across shards and tasks, so worker processes (and what
    they load) start once; recreated only if the settings differ (the old pool is
    closed then, failing any iteration still running on it)."""
    global _shared_pool
    with _shared_pool_lock:
        pool = _shared_pool
        if pool is not None and not pool.closed and pool.workers == workers and pool.timeout_s == float(timeout_s):
            return pool
        if pool is not None:
            pool.close()
        _shared_pool = DecodePool(workers=workers, timeout_s=timeout_s)
        return _shared_pool
