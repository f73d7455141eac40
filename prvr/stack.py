"""The local Prefect stack: server (SQLite, 127.0.0.1), a process work pool, the
deployments of prefect.yaml, and one worker, in the background with pid files and logs.

A pid file records the process's start time and command line beside its pid; a process
is signalled only while all three still match, so a stale file (the process gone and its
pid reused) never stops an unrelated process.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from prvr.env import PROJECT_ROOT, apply_defaults
from stages.processes import bound_to_this_process

PREFECT_FILE = PROJECT_ROOT / "prefect.yaml"


def _prefect_file() -> dict:
    return yaml.safe_load(PREFECT_FILE.read_text(encoding="utf-8"))


def _work_pool() -> str:
    """The work pool prefect.yaml's deployments run on: named there only."""
    pools = {d["work_pool"]["name"] for d in _prefect_file()["deployments"]}
    if len(pools) != 1:
        raise RuntimeError(f"{PREFECT_FILE}: the deployments name {len(pools)} work pools {sorted(pools)}; "
                           "the local stack starts one worker, for one pool")
    return pools.pop()


def full_deployment() -> str:
    """The whole pipeline's deployment as `prefect deployment run` names it: <flow>/<deployment>."""
    from flows.pipeline import prvr_flow  # the flow prefect.yaml's deployments run

    full = next(d for d in _prefect_file()["deployments"] if d["name"] == "full")
    if not full["entrypoint"].endswith(f":{prvr_flow.fn.__name__}"):
        raise RuntimeError(f"{PREFECT_FILE}: deployment 'full' runs {full['entrypoint']}, not the pipeline's flow")
    return f"{prvr_flow.name}/{full['name']}"


WORK_POOL = _work_pool()


@dataclass(frozen=True)
class Stack:
    dir: Path
    host: str
    port: int

    @classmethod
    def from_env(cls, host: str | None = None, port: int | None = None) -> Stack:
        return cls(
            dir=Path(os.environ.get("PRVR_STACK_DIR", PROJECT_ROOT / ".stack")),
            host=host or os.environ.get("PRVR_PREFECT_HOST", "127.0.0.1"),
            port=port or int(os.environ.get("PRVR_PREFECT_PORT", "4200")),
        )

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def pid_file(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.dir / f"{name}.log"


def _prefect_bin() -> str:
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


def _env(stack: Stack) -> dict[str, str]:
    apply_defaults()
    env = dict(os.environ)
    env["PREFECT_API_URL"] = stack.api_url
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    return env


@dataclass(frozen=True)
class ProcessRecord:
    """Who a pid file names: the pid, and what makes that pid this process and no later one."""

    pid: int
    start_time: int  # clock ticks after boot: field 22 of /proc/<pid>/stat
    cmdline: list[str]

    @classmethod
    def of(cls, pid: int) -> ProcessRecord | None:
        """The running process `pid` as /proc shows it now; None if it is gone or unreadable."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        return cls(pid, int(fields[19]), [arg.decode(errors="replace") for arg in cmdline.split(b"\0")[:-1]])

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "start_time": self.start_time, "cmdline": self.cmdline})

    @classmethod
    def from_json(cls, text: str) -> ProcessRecord | None:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), int(data["start_time"]), [str(a) for a in data["cmdline"]])
        except (ValueError, TypeError, KeyError):
            return None  # e.g. a bare pid written by an older prvr: nothing to verify it by


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _read_pid(path: Path, echo=None) -> int | None:
    """The pid in `path` if that process is still the one prvr started; else None (and, with
    `echo`, why a live process of that pid is left alone)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    record = ProcessRecord.from_json(text)
    if record is None:
        if echo is not None and text.strip().isdigit() and _alive(int(text.strip())):
            echo(f"{path} holds only a pid ({text.strip()}), nothing to tell whether that process is still "
                 f"ours: left alone; stop it yourself if it is the Prefect {path.stem}")
        return None
    if not _alive(record.pid):
        return None
    if ProcessRecord.of(record.pid) != record:
        if echo is not None:
            echo(f"{path} is stale: pid {record.pid} now belongs to another process; left alone")
        return None
    return record.pid


def healthy(stack: Stack, timeout: float = 2.0) -> bool:
    return _answers(stack.api_url, timeout)


def _answers(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _spawn(stack: Stack, name: str, args: list[str]) -> int:
    stack.dir.mkdir(parents=True, exist_ok=True)
    log = open(stack.log_file(name), "ab")
    proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=_env(stack), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    record = record_after_exec(proc.pid)
    if record is None:
        raise RuntimeError(f"cannot read /proc/{proc.pid} of the {name} just started (prvr stack needs Linux's /proc)")
    stack.pid_file(name).write_text(record.to_json())
    return proc.pid


def record_after_exec(pid: int, wait_s: float = 10.0, read=None) -> ProcessRecord | None:
    """The record of a process just started, once /proc shows its command line. Popen returns after
    the exec, but /proc/<pid>/cmdline can still read empty for a moment (seen on a fresh clone's
    `make demo`): a record with no command line would never match the running process again, and
    the stack would take its own server for gone."""
    read = read or ProcessRecord.of
    deadline = time.monotonic() + wait_s
    record = read(pid)
    while record is not None and not record.cmdline and time.monotonic() < deadline:
        time.sleep(0.01)
        record = read(pid)
    return record if record is not None and record.cmdline else None


def _run(stack: Stack, args: list[str]) -> None:
    done = subprocess.run(args, cwd=PROJECT_ROOT, env=_env(stack), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def up(stack: Stack, wait_s: float = 120.0, echo=print) -> None:
    prefect = _prefect_bin()
    if _read_pid(stack.pid_file("server")) is None:
        if healthy(stack):
            raise RuntimeError(f"something else already serves {stack.api_url}; stop it or choose --port")
        _spawn(stack, "server", [prefect, "server", "start", "--host", stack.host, "--port", str(stack.port)])
        echo(f"server starting on {stack.ui_url} (log: {stack.log_file('server')})")
    deadline = time.monotonic() + wait_s
    while not healthy(stack):
        if _read_pid(stack.pid_file("server")) is None:
            raise RuntimeError(f"Prefect server exited; see {stack.log_file('server')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prefect server not healthy after {wait_s:.0f}s; see {stack.log_file('server')}")
        time.sleep(1.0)
    _run(stack, [prefect, "--no-prompt", "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"])
    _run(stack, [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)])
    echo(f"work pool {WORK_POOL} and deployments applied")
    if _read_pid(stack.pid_file("worker")) is None:
        _spawn(stack, "worker", [prefect, "worker", "start", "--pool", WORK_POOL, "--type", "process"])
        echo(f"worker started (log: {stack.log_file('worker')})")
    echo(f"Prefect UI: {stack.ui_url}")


def _stop(stack: Stack, name: str, signals: list[signal.Signals], wait_s: float = 20.0, echo=print) -> bool:
    """Stop the process of `name`'s pid file, trying `signals` in turn, then SIGKILL; False if none of ours runs."""
    pid = _read_pid(stack.pid_file(name), echo)
    if pid is None:
        stack.pid_file(name).unlink(missing_ok=True)
        return False
    record = ProcessRecord.of(pid)
    for sig in [*signals, signal.SIGKILL]:
        if ProcessRecord.of(pid) != record:  # gone (or, in the meantime, someone else's)
            break
        try:
            os.killpg(pid, sig)  # it leads its own session and group (start_new_session)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s / len(signals)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _alive(pid):
            break
    stack.pid_file(name).unlink(missing_ok=True)
    return True


def down(stack: Stack, echo=print) -> None:
    # A Prefect worker ignores the first SIGINT (it starts a graceful shutdown); send two.
    if _stop(stack, "worker", [signal.SIGINT, signal.SIGINT, signal.SIGTERM], echo=echo):
        echo("worker stopped")
    if _stop(stack, "server", [signal.SIGTERM, signal.SIGINT], echo=echo):
        echo("server stopped")


def status(stack: Stack) -> dict:
    return {
        "api_url": stack.api_url,
        "healthy": healthy(stack),
        "server_pid": _read_pid(stack.pid_file("server")),
        "worker_pid": _read_pid(stack.pid_file("worker")),
        "logs": str(stack.dir),
    }


# ---- the API server of one `prvr run` -------------------------------------------------


class EphemeralApi:
    """A Prefect API server for this process alone (SQLite under PREFECT_HOME, 127.0.0.1).

    Prefect starts a server like it on its own when no API URL is configured, but that
    one outlives a `prvr run` killed by SIGKILL or SIGTERM (no atexit runs), orphaned and
    still listening. This one is started with a parent-death signal, so the kernel kills
    it when this process ends, however it ends. Start it from the main thread: the
    signal follows the thread that started it.
    """

    def __init__(self) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(self._args(self.port), env=self._env(), stdin=subprocess.DEVNULL,
                                        preexec_fn=bound_to_this_process())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @staticmethod
    def _args(port: int) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]

    @staticmethod
    def _env() -> dict[str, str]:
        # What Prefect's own ephemeral server runs with: no UI, only the services a run needs.
        return {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1"}

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not _answers(self.url, timeout=1.0):
            if self.process.poll() is not None:
                raise RuntimeError(f"the local Prefect API server exited ({self.process.returncode}); "
                                   "its messages are above")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the local Prefect API server did not answer within {timeout_s:g}s")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use_ephemeral_api() -> EphemeralApi | None:
    """Where Prefect would start its own ephemeral API server (no API URL in the
    environment or the active profile), start an EphemeralApi instead and point
    PREFECT_API_URL at it for the rest of this process; elsewhere change nothing.

    It stops at exit, after Prefect's own exit handlers have sent their last logs and
    events (those register later, so run earlier), or with this process if it is killed.
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    server = EphemeralApi()
    atexit.register(server.stop)
    server.wait_ready(settings.server.ephemeral.startup_timeout_seconds)
    os.environ["PREFECT_API_URL"] = server.url  # for child processes too
    os.environ.setdefault("PREFECT_UI_URL", "")  # it serves no UI: no "View at" links to one
    refresh_global_settings_context()  # Prefect read its settings at import
    return server
