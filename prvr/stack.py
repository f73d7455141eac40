"""The local Prefect stack: server (SQLite, 127.0.0.1), a process work pool, the
deployments of prefect.yaml, and one worker, in the background with pid files and logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prvr.env import PROJECT_ROOT, apply_defaults

WORK_POOL = "prvr-process"


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


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def healthy(stack: Stack, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{stack.api_url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _spawn(stack: Stack, name: str, args: list[str]) -> int:
    stack.dir.mkdir(parents=True, exist_ok=True)
    log = open(stack.log_file(name), "ab")
    proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=_env(stack), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    stack.pid_file(name).write_text(str(proc.pid))
    return proc.pid


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
    _run(stack, [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(PROJECT_ROOT / "prefect.yaml")])
    echo(f"work pool {WORK_POOL} and deployments applied")
    if _read_pid(stack.pid_file("worker")) is None:
        _spawn(stack, "worker", [prefect, "worker", "start", "--pool", WORK_POOL, "--type", "process"])
        echo(f"worker started (log: {stack.log_file('worker')})")
    echo(f"Prefect UI: {stack.ui_url}")


def _stop(stack: Stack, name: str, signals: list[signal.Signals], wait_s: float = 20.0) -> bool:
    pid = _read_pid(stack.pid_file(name))
    if pid is None:
        stack.pid_file(name).unlink(missing_ok=True)
        return False
    for sig in signals:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s / len(signals)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _alive(pid):
            break
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    stack.pid_file(name).unlink(missing_ok=True)
    return True


def down(stack: Stack, echo=print) -> None:
    # A Prefect worker ignores the first SIGINT (it starts a graceful shutdown); send two.
    if _stop(stack, "worker", [signal.SIGINT, signal.SIGINT, signal.SIGTERM]):
        echo("worker stopped")
    if _stop(stack, "server", [signal.SIGTERM, signal.SIGINT]):
        echo("server stopped")


def status(stack: Stack) -> dict:
    return {
        "api_url": stack.api_url,
        "healthy": healthy(stack),
        "server_pid": _read_pid(stack.pid_file("server")),
        "worker_pid": _read_pid(stack.pid_file("worker")),
        "logs": str(stack.dir),
    }
