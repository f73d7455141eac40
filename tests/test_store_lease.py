"""One writer per store: the lease, with real processes on a real Zarr store.

A second run on a store that a live run holds stops and names the owner (and touches nothing);
a dead owner's lease is taken over, at once on the same host, after the expiry from elsewhere;
a run whose lease was taken over cannot start or commit a shard; the shard tasks of a run only
read the lease, so the run's own tasks never fight over it.
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

import numpy as np
import pytest
from typer.testing import CliRunner

from configs.schema import load_config
from storage.features import FeatureStore, shard_name
from tests.test_extract import write_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]

# A writer in its own process: takes the lease, says so on stdout, then holds it until killed.
HOLDER = """
import sys, time
from storage.features import FeatureStore
from storage.lease import StoreLease
lease = StoreLease(sys.argv[1], purpose="extract stage of run holder", heartbeat_s=0.2, expire_s=30).acquire()
FeatureStore(sys.argv[1], mode="a", lease_token=lease.token)
print("held", lease.token, flush=True)
time.sleep(600)
"""

# A contender: all of them start at once; each prints whether it got the lease.
CONTENDER = """
import sys, time
from storage.lease import StoreBusy, StoreLease
print("ready", flush=True)
while not __import__("os").path.exists(sys.argv[2]):
    time.sleep(0.005)
try:
    lease = StoreLease(sys.argv[1], purpose="contender").acquire()
except StoreBusy as e:
    print("busy", flush=True)
else:
    print("won", flush=True)
    sys.stdin.read()  # keep the lease until the test closes stdin
    lease.release()
"""


def python(script: str, *args: str, **popen) -> subprocess.Popen:
    popen.setdefault("env", {**os.environ, "PYTHONPATH": str(ROOT)})
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def start_holder(store: str) -> tuple[subprocess.Popen, str]:
    proc = python(HOLDER, store)
    line = proc.stdout.readline()
    assert line.startswith("held"), line + proc.stderr.read()
    return proc, line.split()[1]


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)  # no cleanup: the lease file stays, as after a crash
    proc.wait()


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# A first run: the real extract flow in its own process, on the test's Prefect server.
FIRST_RUN = """
import sys
from configs.schema import load_config
from flows.ingest import ingest_flow_for
cfg = load_config(sys.argv[1])
ingest_flow_for(cfg)(cfg)
"""


@pytest.mark.slow
def test_a_second_run_stops_naming_the_first_and_takes_over_once_it_died(prefect_server, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.ingest import ingest_flow_for
    from prvr.cli import app

    root = write_dataset(tmp_path / "ds", broken=False)
    store = str(tmp_path / "s.zarr")
    # The first run hangs decoding v2, the first video of shard 1, after committing shard 0.
    (tmp_path / "first").mkdir()
    first_cfg = write_config(tmp_path / "first", root, store, shard_size=2, decode_timeout_s=600)
    first = python(FIRST_RUN, str(first_cfg), start_new_session=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": PREFECT_API_URL.value(),
                        "PRVR_DECODE_HANG": "v2."})
    try:
        deadline = time.monotonic() + 300
        while not (Path(store, "videos", shard_name(1)).is_dir()
                   and FeatureStore(store).shard_status(0, None).state == "committed"):
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first run never reached shard 1"
            time.sleep(0.1)
        started = FeatureStore(store).shard_history(1)

        path = write_config(tmp_path, root, store, shard_size=2)
        cfg = load_config(path)
        state = ingest_flow_for(cfg)(cfg, return_state=True)
        owner = f"{socket.gethostname()}:{first.pid}"
        assert state.is_failed()
        assert f"is being written by {owner} (extract stage of run t)" in state.message, state.message
        assert "One writer per store" in state.message
        # The second run touched nothing: shard 1 is still the first run's, mid-way.
        assert FeatureStore(store).shard_history(1) == started
        assert FeatureStore(store).shard_status(1, None).state == "missing"

        out = CliRunner().invoke(app, ["status", str(path)])
        assert f"writer: {owner} (extract stage of run t)" in out.output, out.output
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run and its decode workers, no cleanup
        first.wait()

    # Its owner is dead (same host, the pid is gone): the next run takes the lease over and finishes.
    state = ingest_flow_for(cfg)(cfg, return_state=True)
    assert state.is_completed(), state.message
    assert [FeatureStore(store).shard_status(i, None).state for i in range(3)] == ["committed"] * 3
    assert [e["event"] for e in FeatureStore(store).shard_history(0)] == ["started", "committed"]  # kept
    out = CliRunner().invoke(app, ["status", str(path)])
    assert "writer: none" in out.output  # given back at the end of the run


def test_of_runs_starting_together_exactly_one_gets_the_lease(tmp_path):
    store = str(tmp_path / "s.zarr")
    FeatureStore(store, mode="a")
    go = tmp_path / "go"
    procs = [python(CONTENDER, store, str(go), stdin=subprocess.PIPE) for _ in range(4)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4  # all at the start line
    go.touch()
    answers = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)
    assert sorted(answers) == ["busy", "busy", "busy", "won"], [p.stderr.read() for p in procs]


def test_a_live_owner_keeps_its_lease_and_a_heartbeat_keeps_it_live(tmp_path):
    from storage.lease import StoreBusy, StoreLease, current_lease

    store = str(tmp_path / "s.zarr")
    holder, token = start_holder(store)
    try:
        first = current_lease(store).heartbeat
        deadline = time.monotonic() + 30
        while current_lease(store).heartbeat == first:  # the holder's thread rewrites it (every 0.2 s)
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
        with pytest.raises(StoreBusy, match=f"{socket.gethostname()}:{holder.pid}"):
            StoreLease(store, "second").acquire()
    finally:
        kill(holder)


def write_foreign_lease(store: str, age_s: float):
    """The lease of a run on another machine whose last heartbeat was `age_s` ago."""
    from storage.lease import LeaseInfo, _LeaseFiles

    FeatureStore(store, mode="a")
    beat = time.time() - age_s
    info = LeaseInfo(generation=3, token="elsewhere-token", owner="gpu-7:4242", host="gpu-7", pid=4242,
                     pid_started=None, purpose="extract stage of run other", started_at="2026-01-01T00:00:00+00:00",
                     heartbeat_at="2026-01-01T00:00:00+00:00", heartbeat=beat)
    assert _LeaseFiles(store).create(info)
    return info


def test_a_lease_from_another_host_counts_until_its_heartbeat_expires(tmp_path):
    from storage.lease import LeaseLost, StoreBusy, StoreLease, check_holder, current_lease

    store = str(tmp_path / "s.zarr")
    write_foreign_lease(store, age_s=5)
    with pytest.raises(StoreBusy, match="gpu-7:4242 .extract stage of run other."):
        StoreLease(store, "mine", expire_s=60).acquire()

    store = str(tmp_path / "t.zarr")
    old = write_foreign_lease(store, age_s=120)
    lease = StoreLease(store, "mine", expire_s=60).acquire()
    try:
        assert lease.took_over.owner == "gpu-7:4242"
        assert current_lease(store).owner == f"{socket.gethostname()}:{os.getpid()}"
        assert current_lease(store).generation == old.generation + 1
        # The stalled owner, should it wake up, can neither start nor commit a shard.
        with pytest.raises(LeaseLost, match="taken over"):
            check_holder(store, old.token)
        stalled = FeatureStore(store, mode="a", lease_token=old.token)
        with pytest.raises(LeaseLost):
            stalled.begin_shard(0, {"teacher.t": 4})
        writer = FeatureStore(store, mode="a", lease_token=lease.token).begin_shard(0, {"teacher.t": 4})
        writer.add_video("a", "train", 2.0, np.array([0.5, 1.5], dtype=np.float32),
                         {"teacher.t": np.ones((2, 4), dtype=np.float32)})
        stalled_writer = FeatureStore(store, mode="a", lease_token=lease.token).begin_shard(1, {"teacher.t": 4})
        stalled_writer._fence = stalled._fence  # a writer of the stalled run, mid-shard when the lease moved
        with pytest.raises(LeaseLost):
            stalled_writer.commit("fp")
        writer.commit("fp")
        states = FeatureStore(store).shard_statuses({0: None, 1: None})
        assert states[0].state == "committed" and states[1].state == "missing"
    finally:
        lease.release()


def test_a_torn_lease_file_is_taken_over(tmp_path):
    from storage.lease import StoreLease, current_lease

    store = str(tmp_path / "s.zarr")
    FeatureStore(store, mode="a")
    (tmp_path / "s.zarr" / "leases").mkdir()
    (tmp_path / "s.zarr" / "leases" / "lease-00000001.json").write_text('{"generation": 1, "tok')
    with StoreLease(store, "mine") as lease:
        assert current_lease(store).token == lease.token and current_lease(store).generation == 2


def test_status_json_shows_a_dead_owner_as_gone(tmp_path):
    from prvr.cli import app

    root = write_dataset(tmp_path / "ds", broken=False)
    path = write_config(tmp_path, root, str(tmp_path / "s.zarr"))
    holder, _ = start_holder(str(tmp_path / "s.zarr"))
    kill(holder)
    out = CliRunner().invoke(app, ["status", str(path), "--json"])
    lease = json.loads(out.output)["lease"]
    assert lease["pid"] == holder.pid and not lease["alive"]
    assert f"process {holder.pid} no longer runs" in lease["dead_because"]


def test_lease_and_damage_checks_work_on_an_fsspec_url():
    import fsspec

    from storage.lease import StoreBusy, StoreLease, current_lease

    location = f"memory://prvr-test-{os.getpid()}/s.zarr"
    with StoreLease(location, "url run") as lease:
        with pytest.raises(StoreBusy, match="url run"):
            StoreLease(location, "second").acquire()
        writer = FeatureStore(location, mode="a", lease_token=lease.token).begin_shard(0, {"teacher.t": 4})
        writer.add_video("a", "train", 2.0, np.array([0.5, 1.5], dtype=np.float32),
                         {"teacher.t": np.ones((2, 4), dtype=np.float32)})
        writer.commit("fp")
    assert current_lease(location) is None
    assert FeatureStore(location).shard_status(0, "fp").state == "committed"
    fsspec.filesystem("memory").rm(f"/prvr-test-{os.getpid()}/s.zarr/videos/shard-00000/teacher.t/c/0/0")
    status = FeatureStore(location).shard_status(0, "fp")
    assert status.state == "corrupt" and status.problems == ["teacher.t: chunk c/0/0 missing"]
