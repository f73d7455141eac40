"""Whole-process tests: `prvr run` killed with SIGKILL mid-shard, and the local Prefect stack
(`prvr stack up`, `prefect deployment run prvr/extract`, `prvr stack down`)."""

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

from storage.features import FeatureStore, shard_name
from tests.test_extract import GOOD, write_config, write_dataset

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def prvr(args: list[str], env: dict, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "prvr"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"prvr {args} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def base_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update({"PREFECT_HOME": str(tmp / "prefect-home"), "HF_HUB_OFFLINE": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return env


def test_sigkill_mid_shard_then_rerun_equals_a_clean_run(tmp_path):
    root = write_dataset(tmp_path / "ds", broken=False)
    killed_store, clean_store = str(tmp_path / "killed.zarr"), str(tmp_path / "clean.zarr")
    # decode_timeout_s 600: the hung decode outlasts the kill, so nothing but the kill ends shard 1.
    # (At 60 s, waiting for shard 1's rows raced the pool's timeout: rows wait in memory until a
    # chunk fills, so this small shard's rows reach disk only in the commit that follows the
    # timeout, and a loaded machine once let the commit win.)
    cfg_killed = write_config(tmp_path, root, killed_store, shard_size=2, batch_size=1, decode_timeout_s=600)
    env = base_env(tmp_path)
    hung = tmp_path / "v3-decode-hung"
    # Drill hook: the decode of v3 (second video of shard 1) hangs, so the kill lands mid-shard,
    # after v2 was decoded and while shard 1's arrays exist uncommitted on disk.
    proc = subprocess.Popen([str(BIN / "prvr"), "run", str(cfg_killed), "--stages", "extract"],
                            env={**env, "PRVR_DECODE_HANG": "v3.", "PRVR_DECODE_HANG_MARKER": str(hung)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        shard1 = Path(killed_store) / "videos" / shard_name(1)
        while not (hung.exists() and (shard1 / "frame_time" / "zarr.json").exists()):
            assert proc.poll() is None, "prvr run ended before it could be killed"
            assert time.monotonic() < deadline, "the decode of v3 never began hanging"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its decode workers, no cleanup
        proc.wait()
    store = FeatureStore(killed_store)
    assert store.shard_status(0, None).state == "committed"
    state = store.shard_status(1, None)
    assert state.state == "missing" and "never committed" in state.note
    assert "v2" not in store.video_index()  # decoded, in an uncommitted shard: invisible

    prvr(["run", str(cfg_killed), "--stages", "extract"], env)
    prvr(["run", str(write_config(tmp_path, root, clean_store, shard_size=2, batch_size=1, decode_timeout_s=600)),
          "--stages", "extract"], env)
    killed, clean = FeatureStore(killed_store), FeatureStore(clean_store)
    assert killed.feature_names() == clean.feature_names()
    for vid, _, _ in GOOD:
        for feature in clean.feature_names():
            np.testing.assert_array_equal(killed.video_frames(vid, feature)[0], clean.video_frames(vid, feature)[0])
    status = json.loads(prvr(["status", str(cfg_killed), "--stages", "extract", "--json"], env).stdout)
    assert status["complete"] and [s["state"] for s in status["shards"]] == ["committed"] * 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stack_and_deployment_end_to_end(tmp_path):
    root = write_dataset(tmp_path / "ds")
    cfg = write_config(tmp_path, root, str(tmp_path / "s.zarr"))
    port = free_port()
    env = {**base_env(tmp_path), "PRVR_STACK_DIR": str(tmp_path / "stack"), "PRVR_PREFECT_PORT": str(port),
           "PREFECT_WORKER_QUERY_SECONDS": "2"}
    api = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    try:
        prvr(["stack", "up"], env, timeout=300)
        assert json.loads(prvr(["stack", "status"], env).stdout)["healthy"]
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "prvr/extract",
                              "--param", f"config_path={cfg}", "--watch", "--watch-timeout", "400"],
                             env=api, capture_output=True, text=True, timeout=500)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Completed" in run.stdout, run.stdout[-3000:]
        status = json.loads(prvr(["status", str(cfg), "--stages", "extract", "--json"], env).stdout)
        assert status["complete"]
        left_out = {k for s in status["shards"] for k in s["failed_videos"]}
        assert left_out == {"bad_empty", "bad_trunc", "bad_text"}

        # The whole DAG on a tiny synthetic world: extract, teacher, train, evaluate.
        world = tmp_path / "world"
        prvr(["synth", str(world), "--preset", "small", "--videos", "10", "--seed", "3"], env)
        full_cfg = tmp_path / "full.yaml"
        full_cfg.write_text(json.dumps({
            "name": "tiny", "dataset": {"root": str(world)}, "store": str(world / "features.zarr"),
            "runs_dir": str(tmp_path / "runs"),
            "extract": {"shard_size": 4, "device": "cpu", "decode_workers": 1,
                        "teacher": {"model": "prvr-tiny", "pretrained": None}},
            "train": {"epochs": 2, "batch_videos": 4, "hidden": 32, "device": "cpu"},
        }))
        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "prvr/full",
                              "--param", f"config_path={full_cfg}", "--watch", "--watch-timeout", "500"],
                             env=api, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        metrics = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
        assert "DL-DKD student (fused)" in metrics["methods"] and (tmp_path / "runs/tiny/report.md").exists()
        hits = json.loads(prvr(["search", str(full_cfg), "a red circle moves to the left", "--top", "3", "--json"],
                               env).stdout)
        assert len(hits) == 3 and all(0 <= h["moment"][0] <= h["moment"][1] for h in hits)
    finally:
        logs = "\n".join(p.read_text()[-2000:] for p in (tmp_path / "stack").glob("*.log"))
        prvr(["stack", "down"], env, check=False)
    info = json.loads(prvr(["stack", "status"], env, check=False).stdout)
    assert info["server_pid"] is None and info["worker_pid"] is None and not info["healthy"], logs
