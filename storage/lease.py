"""One writer per store: a lease file in the store, kept alive by a heartbeat.

    <store>/leases/lease-00000007.json     the current lease: the highest generation present
        {generation, token, owner "host:pid", host, pid, pid_started, purpose, started_at,
         heartbeat_at, heartbeat (unix seconds)}

A run takes the lease before it writes and gives it back when done; its heartbeat thread
rewrites the file every `heartbeat_s`. Another run finding a live lease stops with
`StoreBusy`, naming the owner. A lease is taken over when its owner is gone: on the same host
at once (its pid no longer runs), from anywhere once its heartbeat is older than `expire_s`.

Taking over never deletes or rewrites the old lease: the new owner creates the next
generation's file with an exclusive create, so of two runs taking over at once exactly one
wins (the store's create-if-absent is atomic on local disks; on object stores the winner is
also checked by reading back). An owner that finds a higher generation than its own has lost
the lease and stops writing (`LeaseLost`); the shard writers check that before they start and
before they commit, so a run that stalled past `expire_s` cannot commit over its successor.
Heartbeats compare wall clocks across hosts: keep the machines' clocks in sync (NTP).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from prvr.errors import UserError
from storage.location import zarr_store

log = logging.getLogger("prvr.lease")

LEASE_DIR = "leases"
HEARTBEAT_S = 10.0  # how often the owner rewrites its lease
EXPIRE_S = 60.0  # a lease whose heartbeat is older than this is taken over from any host
_FILE = re.compile(r"^lease-(\d{8})\.json$")


class StoreBusy(UserError, RuntimeError):
    """Another live run holds the store's lease."""


class LeaseLost(UserError, RuntimeError):
    """This run's lease was taken over (it stalled past the expiry): it must stop writing."""


def _key(generation: int) -> str:
    return f"{LEASE_DIR}/lease-{generation:08d}.json"


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def _process_started(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def _pid_runs(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    if os.path.isdir("/proc"):
        now_started = _process_started(pid)
        if now_started is None:  # a zombie, or gone between the calls
            return False
        if started is not None and now_started != started:  # the pid was reused by another process
            return False
    return True


@dataclass(frozen=True)
class LeaseInfo:
    generation: int
    token: str
    owner: str
    host: str
    pid: int
    pid_started: str | None
    purpose: str
    started_at: str
    heartbeat_at: str
    heartbeat: float

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.heartbeat)

    def dead_because(self, expire_s: float = EXPIRE_S, now: float | None = None) -> str | None:
        """Why the owner counts as gone, or None while it is alive."""
        age = self.age_s(now)
        if age > expire_s:
            return f"its last heartbeat was {age:.0f}s ago (expiry {expire_s:.0f}s)"
        if self.host == socket.gethostname() and not _pid_runs(self.pid, self.pid_started):
            return f"process {self.pid} no longer runs on {self.host}"
        return None

    def describe(self, now: float | None = None) -> str:
        return (f"{self.owner} ({self.purpose}) since {self.started_at}, "
                f"last heartbeat {self.age_s(now):.0f}s ago")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _LeaseFiles:
    """The lease files of one store, through the store's own key-value interface."""

    def __init__(self, location: str, read_only: bool = False):
        from zarr.core.buffer import default_buffer_prototype

        self.location = location
        self._store = zarr_store(location, read_only=read_only)
        self._prototype = default_buffer_prototype()

    def _sync(self, coroutine):
        from zarr.core.sync import sync

        return sync(coroutine)

    def generations(self) -> list[int]:
        async def names() -> list[str]:
            return [n async for n in self._store.list_dir(LEASE_DIR)]

        return sorted(int(m.group(1)) for n in self._sync(names()) if (m := _FILE.match(n)))

    def read(self, generation: int) -> LeaseInfo | None:
        """The lease of a generation; None when absent or unreadable (a writer died mid-write)."""
        buffer = self._sync(self._store.get(_key(generation), prototype=self._prototype))
        if buffer is None:
            return None
        try:
            data = json.loads(buffer.to_bytes())
            return LeaseInfo(**{k: data[k] for k in LeaseInfo.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None

    def current(self) -> tuple[int, LeaseInfo | None] | None:
        generations = self.generations()
        return (generations[-1], self.read(generations[-1])) if generations else None

    def create(self, info: LeaseInfo) -> bool:
        """Write the lease if its generation's file does not exist yet; True when this call wrote it."""
        self._sync(self._store.set_if_not_exists(_key(info.generation), self._buffer(info)))
        written = self.read(info.generation)
        return written is not None and written.token == info.token

    def rewrite(self, info: LeaseInfo) -> None:
        self._sync(self._store.set(_key(info.generation), self._buffer(info)))

    def delete(self, generation: int) -> None:
        self._sync(self._store.delete(_key(generation)))

    def _buffer(self, info: LeaseInfo):
        return self._prototype.buffer.from_bytes(json.dumps(info.as_dict(), indent=1).encode())


def current_lease(location: str) -> LeaseInfo | None:
    """The store's lease as it stands (for `prvr status`); None when nobody holds one."""
    found = _LeaseFiles(location, read_only=True).current()
    return found[1] if found else None


def check_holder(location: str, token: str) -> None:
    """Raise LeaseLost unless the lease `token` is still the store's current lease (a read, never a write)."""
    found = _LeaseFiles(location, read_only=True).current()
    holder = found[1] if found else None
    if holder is None or holder.token != token:
        now = f"now held by {holder.describe()}" if holder else "no longer held"
        raise LeaseLost(f"this run's lease on {location} was taken over ({now}); this writer stops")


class StoreLease:
    """The writer's lease on one store: `with StoreLease(location, "extract of run x") as lease: ...`."""

    def __init__(self, location: str, purpose: str, heartbeat_s: float = HEARTBEAT_S, expire_s: float = EXPIRE_S):
        if heartbeat_s >= expire_s:
            raise ValueError(f"heartbeat_s ({heartbeat_s}) must be shorter than expire_s ({expire_s})")
        self.location = location
        self.purpose = purpose
        self.heartbeat_s = heartbeat_s
        self.expire_s = expire_s
        self._files = _LeaseFiles(location)
        self._info: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the lease was lost, once it was
        self.took_over: LeaseInfo | None = None  # the dead owner's lease this one replaced

    @property
    def token(self) -> str:
        if self._info is None:
            raise RuntimeError("the lease is not held")
        return self._info.token

    def _new_info(self, generation: int) -> LeaseInfo:
        now = time.time()
        host, pid = socket.gethostname(), os.getpid()
        return LeaseInfo(generation=generation, token=uuid.uuid4().hex, owner=f"{host}:{pid}", host=host, pid=pid,
                         pid_started=_process_started(pid), purpose=self.purpose, started_at=_iso(now),
                         heartbeat_at=_iso(now), heartbeat=now)

    def acquire(self) -> StoreLease:
        for _ in range(8):  # each round either wins, meets a live owner, or loses a race and looks again
            found = self._files.current()
            previous = None
            if found is not None:
                generation, previous = found
                reason = (previous.dead_because(self.expire_s) if previous is not None
                          else "its lease file is unreadable")
                if previous is not None and reason is None:
                    raise StoreBusy(
                        f"the store {self.location} is being written by {previous.describe()}. One writer per "
                        f"store: wait for that run to end or stop it, then run again. A dead owner's lease is "
                        f"taken over by the next run: at once on the same host, from elsewhere "
                        f"{self.expire_s:.0f}s after its last heartbeat.")
            info = self._new_info(found[0] + 1 if found else 1)
            if not self._files.create(info):
                continue  # another run created this generation first
            if self._files.generations()[-1] != info.generation:  # a racing run went higher: it wins
                self._files.delete(info.generation)
                continue
            self._info = info
            self.took_over = previous
            if found is not None:
                log.warning("took over the lease of %s from %s: %s", self.location,
                            previous.owner if previous else "an unknown owner", reason)
            for old in self._files.generations():
                if old < info.generation:
                    self._files.delete(old)
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="store-lease-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise StoreBusy(f"could not take the lease of {self.location}: other runs kept taking it")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.check()
                now = time.time()
                self._info = LeaseInfo(**{**self._info.as_dict(), "heartbeat": now, "heartbeat_at": _iso(now)})
                self._files.rewrite(self._info)
            except LeaseLost as e:
                self.lost = str(e)
                log.error("%s", e)
                return
            except Exception as e:  # a store hiccup: try again at the next beat; expiry is far longer
                log.warning("lease heartbeat on %s failed: %s: %s", self.location, type(e).__name__, e)

    def check(self) -> None:
        """Raise LeaseLost unless this lease is still the store's current one."""
        check_holder(self.location, self.token)

    def release(self) -> None:
        if self._info is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            found = self._files.current()
            if found is not None and found[1] is not None and found[1].token == self._info.token:
                self._files.delete(self._info.generation)
        finally:
            self._info = None

    def __enter__(self) -> StoreLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
