"""The processes prvr starts and stops: `prvr run`'s own API server, the stack's pid files.

Real subprocesses, real signals; waits are liveness bounds polled, never speed checks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prvr import stack
from synth.test_cards import has_ffmpeg, make_video

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; parent-death signal")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # dead, not yet reaped


def wait_for(condition, bound_s: float) -> bool:
    """Poll `condition` until it holds or `bound_s` passes (a bound on liveness, not speed)."""
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def api_server_of(pid: int) -> tuple[int, int] | None:
    """(pid, port) of the uvicorn API server that process `pid` started, if any yet."""
    for child in children(pid):
        try:
            args = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "uvicorn" in args and "--port" in args:
            return child, int(args[args.index("--port") + 1])
    return None


def tiny_run_config(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    make_video(root / "videos" / "v.mp4", seconds=2, size=(64, 48))
    (root / "videos.jsonl").write_text(json.dumps({"video_id": "v", "path": "videos/v.mp4", "split": "train"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"query_id": "q", "video_id": "v", "text": "a card",
                                                    "split": "train"}) + "\n")
    config = {"name": "t", "dataset": {"root": str(root)}, "store": str(tmp_path / "s.zarr"),
              "runs_dir": str(tmp_path / "runs"),
              "extract": {"shard_size": 1, "device": "cpu", "decode_workers": 1, "shard_retries": 0,
                          "teacher": {"model": "prvr-tiny", "pretrained": None}, "visual": ["clip"]}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow  # starts `prvr run` (imports Prefect, starts a server), then kills it
@pytest.mark.skipif(not has_ffmpeg(), reason="needs the system ffmpeg")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_prvr_run_takes_its_api_server_with_it(tmp_path, sig):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect"), HF_HUB_OFFLINE="1")
    run = subprocess.Popen([sys.executable, "-c", "from prvr.cli import app; app()", "run",
                            str(tiny_run_config(tmp_path)), "--stages", "extract"],
                           cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    server = None
    try:
        assert wait_for(lambda: api_server_of(run.pid) is not None or run.poll() is not None, 300)
        server = api_server_of(run.pid)
        assert server is not None, f"prvr run ended ({run.returncode}) before its API server was seen"
        server_pid, port = server
        assert wait_for(lambda: listening(port) or gone(server_pid), 300) and listening(port)
        run.send_signal(sig)
        run.wait(timeout=60)
        assert wait_for(lambda: gone(server_pid) and not listening(port), 60), (
            f"API server {server_pid} outlived prvr run (killed by {sig.name}), still on port {port}")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if server is not None and not gone(server[0]):
            os.kill(server[0], signal.SIGKILL)  # the orphan this test made


# ---- pid files of `prvr stack` ------------------------------------------------------


@pytest.fixture
def bystander():
    """An unrelated process (its own session, as the stack's are) that a stale pid file may name."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def a_stack(tmp_path: Path) -> stack.Stack:
    return stack.Stack(dir=tmp_path / "stack", host="127.0.0.1", port=1)


def test_stack_down_leaves_alone_a_process_that_took_over_a_bare_pid(tmp_path, bystander):
    where = a_stack(tmp_path)
    where.dir.mkdir()
    where.pid_file("server").write_text(str(bystander.pid))  # as an older prvr wrote them
    said = []
    stack.down(where, echo=said.append)
    assert bystander.poll() is None, "stack down signalled a process prvr did not start"
    assert any("holds only a pid" in line and "left alone" in line for line in said)
    assert "server stopped" not in said


def test_stack_down_leaves_alone_a_process_whose_start_time_differs(tmp_path, bystander):
    where = a_stack(tmp_path)
    where.dir.mkdir()
    now = stack.ProcessRecord.of(bystander.pid)
    stale = stack.ProcessRecord(bystander.pid, now.start_time - 1, now.cmdline)  # the pid, reused
    where.pid_file("worker").write_text(stale.to_json())
    said = []
    stack.down(where, echo=said.append)
    assert bystander.poll() is None
    stale_file = where.pid_file("worker")
    assert f"{stale_file} is stale: pid {bystander.pid} now belongs to another process; left alone" in said
    assert not where.pid_file("worker").exists()


def test_stack_down_stops_the_process_it_started(tmp_path):
    where = a_stack(tmp_path)
    pid = stack._spawn(where, "worker", [sys.executable, "-c", "import time; time.sleep(600)"])
    record = json.loads(where.pid_file("worker").read_text())
    assert record["pid"] == pid and record["cmdline"][1:] == ["-c", "import time; time.sleep(600)"]
    assert stack.status(where)["worker_pid"] == pid
    said = []
    stack.down(where, echo=said.append)
    assert said == ["worker stopped"] and gone(pid)
    assert not where.pid_file("worker").exists()


def test_a_started_process_is_recorded_once_proc_shows_its_command_line():
    """/proc/<pid>/cmdline can read empty just after the exec: the record waits for it (a record
    without a command line never matches the process again), and gives up on a process that never
    shows one."""
    full = stack.ProcessRecord(42, 7, ["prefect", "server", "start"])
    reads = iter([stack.ProcessRecord(42, 7, []), stack.ProcessRecord(42, 7, []), full])
    assert stack.record_after_exec(42, read=lambda pid: next(reads)) == full
    assert stack.record_after_exec(42, wait_s=0.05, read=lambda pid: stack.ProcessRecord(42, 7, [])) is None
    assert stack.record_after_exec(42, read=lambda pid: None) is None
