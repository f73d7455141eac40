"""Failure drills: environment variables that make extraction fail on purpose, so tests and
operators can watch the pipeline survive a failed shard, a lost machine, a hung or crashing
decoder. Unset, each is a no-op.

    PRVR_FAIL_SHARDS="1,3"   those shards raise ShardFailed before any work
    PRVR_KILL_SHARDS="1,3"   the process extracting them SIGKILLs itself after the shard's first
                             video (a lost machine or Dask worker, mid-shard, partial shard on disk);
                             with PRVR_KILL_ONCE_DIR set, once per shard: a marker file there
                             records that it happened
    PRVR_DECODE_HANG=TEXT    a decode worker given a path containing TEXT sleeps forever (the
                             pool's timeout kill, without a real decord hang); with
                             PRVR_DECODE_HANG_MARKER=FILE it first creates FILE, so a drill
                             can tell from outside that the hang has begun
    PRVR_DECODE_CRASH=TEXT   a decode worker given such a path kills itself with SIGSEGV
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

log = logging.getLogger("prvr.drills")

FAIL_DRILL_ENV = "PRVR_FAIL_SHARDS"
KILL_DRILL_ENV = "PRVR_KILL_SHARDS"
KILL_ONCE_ENV = "PRVR_KILL_ONCE_DIR"
HANG_DRILL_ENV = "PRVR_DECODE_HANG"
HANG_MARKER_ENV = "PRVR_DECODE_HANG_MARKER"
CRASH_DRILL_ENV = "PRVR_DECODE_CRASH"


class ShardFailed(RuntimeError):
    """A shard that must not be committed (strict mode with bad videos, or a drill)."""


def _listed(variable: str) -> set[str]:
    return {s.strip() for s in os.environ.get(variable, "").split(",") if s.strip()}


def fail_shard_drill(index: int) -> None:
    if str(index) in _listed(FAIL_DRILL_ENV):
        raise ShardFailed(f"shard {index} failed on purpose ({FAIL_DRILL_ENV}={os.environ[FAIL_DRILL_ENV]})")


def kill_shard_drill(index: int) -> None:
    if str(index) not in _listed(KILL_DRILL_ENV):
        return
    once = os.environ.get(KILL_ONCE_ENV)
    if once:
        try:  # O_EXCL: of all attempts on all machines sharing the folder, one creates it
            os.close(os.open(Path(once) / f"killed-shard-{index:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    log.warning("shard %d: killing this process (pid %d) on purpose (%s)", index, os.getpid(), KILL_DRILL_ENV)
    os.kill(os.getpid(), signal.SIGKILL)


def decode_drills(path: str) -> None:
    """In decode workers: simulate a decoder that hangs or crashes on this path."""
    hang_marker = os.environ.get(HANG_DRILL_ENV)
    if hang_marker and hang_marker in path:
        marker = os.environ.get(HANG_MARKER_ENV)
        if marker:
            Path(marker).touch()
        while True:
            time.sleep(3600)
    crash_marker = os.environ.get(CRASH_DRILL_ENV)
    if crash_marker and crash_marker in path:
        os.kill(os.getpid(), signal.SIGSEGV)
