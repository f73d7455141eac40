"""Scale-out on a real Dask cluster: the extract flow through prefect-dask's DaskTaskRunner on a
LocalCluster of two worker processes, a worker killed mid-shard, the teacher cache on the cluster.

Real ffmpeg videos, real decord and decoder pools inside the Dask workers, a real Prefect server.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from configs.schema import RunConfig, load_config
from flows import runners
from storage.features import FeatureStore
from tests.test_extract import write_config, write_dataset

SHARDS = 4  # 8 videos (5 good, 3 broken) in shards of 2
KILLED = 1  # the shard whose worker the drill kills


# ---- fast: the runner choice ---------------------------------------------------------
def config_with(tmp_path: Path, **runner) -> RunConfig:
    path = write_config(tmp_path, tmp_path, str(tmp_path / "s.zarr"))
    return load_config(path, {f"runner.{k}": v for k, v in runner.items()})


def test_threads_is_the_default_and_unchanged(tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner

    cfg = config_with(tmp_path)
    runner = runners.task_runner_for(cfg)
    assert cfg.runner.kind == "threads"
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 1
    assert runners.gpu_resources(cfg) == {}


def test_dask_runners_from_the_config(tmp_path):
    import dask
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    remote = runners.task_runner_for(config_with(tmp_path, kind="dask", address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"

    with dask.config.set({"distributed.worker.daemon": True}):
        local = runners.task_runner_for(config_with(tmp_path, kind="local-dask", workers=3, threads_per_worker=2))
        # Worker processes may start children (decoder pool); set for as long as the nannies live.
        assert dask.config.get("distributed.worker.daemon") is False
    assert isinstance(local, DaskTaskRunner) and local.cluster_class is LocalCluster
    assert local.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 2, "processes": True,
                                    "host": "127.0.0.1", "dashboard_address": "127.0.0.1:8787"}


def test_local_cluster_on_gpus_declares_and_pins_one_gpu_per_worker():
    from configs.schema import RunnerConfig

    kwargs = runners.local_cluster_kwargs(RunnerConfig(kind="local-dask", workers=3), ["2", "5"])
    assert kwargs["resources"] == {"GPU": 1}
    (plugin,) = kwargs["plugins"]

    class FakeWorker:
        def __init__(self, name):
            self.name = name

    seen = []
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        for name in (0, 1, 2):
            plugin.setup(FakeWorker(name))
            seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
    assert seen == ["2", "5", "2"]


def test_holding_annotates_only_with_resources():
    import dask

    with runners.holding({}):
        assert dask.get_annotations() == {}
    with runners.holding({"GPU": 1}):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}


def _pool_in_daemon(queue) -> None:
    from stages.decode import DecodePool

    try:
        DecodePool(workers=1, timeout_s=5).close()
        queue.put("started")
    except Exception as e:  # noqa: BLE001 - the message is what the test checks
        queue.put(f"{type(e).__name__}: {e}")


def test_decoder_pool_in_a_daemonic_process_says_what_to_set():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=_pool_in_daemon, args=(queue,), daemon=True)
    process.start()
    message = queue.get(timeout=120)
    process.join(timeout=30)
    assert "daemonic" in message and "DASK_DISTRIBUTED__WORKER__DAEMON=False" in message


# ---- slow: a real cluster ------------------------------------------------------------
@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    runners.allow_worker_children()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster, set_as_default=False) as client:
        yield cluster, client


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"))


def make_config(tmp: Path, root: Path, store: str, **runner) -> RunConfig:
    path = write_config(tmp, root, store, shard_size=2)
    return load_config(path, {f"runner.{k}": v for k, v in runner.items()})


@pytest.fixture(scope="module")
def threads_store(dataset, tmp_path_factory, prefect_server) -> RunConfig:
    """The reference: the same extraction on the default threads runner, in this process."""
    from flows.ingest import ingest_flow_for

    tmp = tmp_path_factory.mktemp("threads")
    cfg = make_config(tmp, dataset, str(tmp / "s.zarr"))
    state = ingest_flow_for(cfg)(cfg, return_state=True)
    assert state.is_completed(), state.message
    return cfg


def task_runs(flow_run_id) -> dict[str, tuple[str, list[str]]]:
    """Task run name -> (final state, every state it went through)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {r.name: (r.state_type.value, [s.type.value for s in client.read_task_run_states(r.id)])
                for r in runs}


# attrs that say when and by whom, not what: they differ between any two runs
_TIMING_ATTRS = {"started_at", "committed", "history", "created_at", "modified_at", "last_error"}


def store_contents(location: str) -> dict[str, object]:
    """Every array (as numpy) and every attribute but the timing ones, by path."""
    found: dict[str, object] = {}

    def walk(group: zarr.Group, prefix: str) -> None:
        found[f"{prefix}@attrs"] = {k: v for k, v in group.attrs.items() if k not in _TIMING_ATTRS}
        for name, array in group.arrays():
            found[f"{prefix}/{name}"] = array[...]
        for name, child in group.groups():
            walk(child, f"{prefix}/{name}")

    walk(zarr.open_group(location, mode="r", use_consolidated=False), "")
    return found


def assert_same_store(a: str, b: str) -> None:
    """Same extracted features (videos/, text/); derived teacher caches are compared on their own."""
    left, right = ({k: v for k, v in store_contents(x).items() if not k.startswith("/teacher")} for x in (a, b))
    assert sorted(left) == sorted(right)
    for key in left:
        if isinstance(left[key], np.ndarray):
            assert left[key].dtype == right[key].dtype and left[key].shape == right[key].shape, key
            assert left[key].tobytes() == right[key].tobytes(), f"{key} differs"  # bitwise
        else:
            assert left[key] == right[key], key


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def commits_and_starts(store: FeatureStore, index: int) -> tuple[list[dict], list[dict]]:
    history = store.shard_history(index)
    return [e for e in history if e["event"] == "committed"], [e for e in history if e["event"] == "started"]


def pid_of(event: dict) -> int:
    return int(event["by"].rsplit(":", 1)[1])


@pytest.mark.slow
def test_dask_runner_extracts_what_threads_extract(dataset, threads_store, cluster, tmp_path):
    from flows.ingest import ingest_flow_for

    _, client = cluster
    cfg = make_config(tmp_path, dataset, str(tmp_path / "s.zarr"), kind="dask", address=cluster[0].scheduler_address)
    pids = worker_pids(client)
    state = ingest_flow_for(cfg)(cfg, return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert {name: final for name, (final, _) in runs.items()} == {
        **{f"extract-shard-{i:05d}": "COMPLETED" for i in range(SHARDS)},
        "extract-text-train": "COMPLETED", "extract-text-test": "COMPLETED"}

    store = FeatureStore(cfg.store)
    assert [store.shard_status(i, None).state for i in range(SHARDS)] == ["committed"] * SHARDS
    ran_on = set()
    for i in range(SHARDS):
        commits, starts = commits_and_starts(store, i)
        assert len(commits) == 1 and len(starts) == 1, store.shard_history(i)
        ran_on.add(pid_of(commits[0]))
    assert ran_on <= pids and os.getpid() not in ran_on  # the workers wrote the shards, not the flow
    assert_same_store(threads_store.store, cfg.store)

    # Each worker loaded its model once and kept one decoder pool for all its tasks.
    def loaded() -> tuple[int, bool]:
        from models.clip import _encoder_cache
        from stages.decode import pool as decode

        return len(_encoder_cache), decode._shared_pool is not None and not decode._shared_pool.closed

    assert set(client.run(loaded).values()) <= {(1, True), (0, False)}  # (0, False): a worker given no task

    # A rerun finds every shard committed and submits nothing.
    state = ingest_flow_for(cfg)(cfg, return_state=True)
    assert state.is_completed() and task_runs(state.state_details.flow_run_id) == {}


@pytest.mark.slow
def test_a_worker_killed_mid_shard_loses_nothing_and_commits_once(dataset, threads_store, cluster, tmp_path):
    from flows.ingest import ingest_flow_for
    from stages.drills import KILL_DRILL_ENV, KILL_ONCE_ENV

    _, client = cluster
    markers = tmp_path / "markers"
    markers.mkdir()
    drill = {KILL_DRILL_ENV: str(KILLED), KILL_ONCE_ENV: str(markers)}
    client.run(lambda: os.environ.update(drill))  # a lambda runs there; a bound method would copy os.environ
    try:
        cfg = make_config(tmp_path, dataset, str(tmp_path / "s.zarr"), kind="dask",
                          address=cluster[0].scheduler_address)
        state = ingest_flow_for(cfg)(cfg, return_state=True)
    finally:
        client.run(lambda: [os.environ.pop(k, None) for k in (KILL_DRILL_ENV, KILL_ONCE_ENV)])
    assert (markers / f"killed-shard-{KILLED:05d}").exists()  # the drill did fire
    assert state.is_completed(), state.message

    store = FeatureStore(cfg.store)
    assert [store.shard_status(i, None).state for i in range(SHARDS)] == ["committed"] * SHARDS
    commits, starts = commits_and_starts(store, KILLED)
    # Started on one worker, which died; started again on another process, committed there, once.
    assert len(starts) == 2 and len(commits) == 1, store.shard_history(KILLED)
    assert pid_of(starts[0]) != pid_of(starts[1]) == pid_of(commits[0])
    for i in set(range(SHARDS)) - {KILLED}:
        commits, starts = commits_and_starts(store, i)
        assert len(commits) == 1 and len(starts) == 1, store.shard_history(i)
    assert_same_store(threads_store.store, cfg.store)

    # Prefect saw one task run for the shard: Dask re-ran it, the run went Running -> Pending -> Running.
    final, states = task_runs(state.state_details.flow_run_id)[f"extract-shard-{KILLED:05d}"]
    assert final == "COMPLETED" and states.count("RUNNING") == 2, states


@pytest.mark.slow
def test_a_shard_whose_workers_all_die_fails_the_flow_and_is_redone_on_rerun(dataset, threads_store, cluster,
                                                                              tmp_path):
    from flows.ingest import ingest_flow_for
    from stages.drills import KILL_DRILL_ENV

    dask_cluster, client = cluster

    def allowed_failures(n: int) -> int:
        def swap(dask_scheduler) -> int:
            before, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
            return before
        return client.run_on_scheduler(swap)

    cfg = make_config(tmp_path, dataset, str(tmp_path / "s.zarr"), kind="dask", address=dask_cluster.scheduler_address)
    before = allowed_failures(0)  # Dask gives up after the first death (default: 3 re-runs)
    client.run(lambda: os.environ.update({KILL_DRILL_ENV: str(KILLED)}))  # every attempt dies
    try:
        state = ingest_flow_for(cfg)(cfg, return_state=True)
    finally:
        allowed_failures(before)
        client.run(lambda: os.environ.pop(KILL_DRILL_ENV, None))
    assert state.is_failed()
    assert f"shard {KILLED} (failed: lost on the Dask cluster: KilledWorker" in state.message, state.message
    status = FeatureStore(cfg.store).shard_status(KILLED, None)
    assert status.state == "failed" and "KilledWorker" in status.error
    final, _ = task_runs(state.state_details.flow_run_id).get(f"extract-shard-{KILLED:05d}", ("CRASHED", []))
    assert final == "CRASHED"  # not left Running forever (absent: the run never reached the API)

    # Tasks queued on the same worker die with it and, at allowed-failures 0, are lost too.
    store = FeatureStore(cfg.store)
    undone = {f"extract-shard-{i:05d}" for i in range(SHARDS) if store.shard_status(i, None).state != "committed"}
    undone |= {f"extract-text-{s}" for s in ("train", "test") if store.text_status(s, None) != "committed"}
    state = ingest_flow_for(cfg)(cfg, return_state=True)
    assert state.is_completed(), state.message
    assert set(task_runs(state.state_details.flow_run_id)) == undone  # exactly what was missing
    events = [e["event"] for e in FeatureStore(cfg.store).shard_history(KILLED)]
    assert events == ["started", "failed", "started", "committed"]
    assert_same_store(threads_store.store, cfg.store)


@pytest.mark.slow
def test_teacher_cache_on_the_cluster_equals_the_local_one(dataset, threads_store, cluster, tmp_path):
    from flows.ingest import ingest_flow_for
    from flows.model import teacher_flow
    from stages.teacher import build_teacher_cache, teacher_keys
    from storage.teacher_cache import TeacherCache

    _, client = cluster
    cfg = make_config(tmp_path, dataset, str(tmp_path / "s.zarr"), kind="dask", address=cluster[0].scheduler_address)
    assert ingest_flow_for(cfg)(cfg, return_state=True).is_completed()
    before = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))

    results = teacher_flow(cfg)
    assert results and not any(r["skipped"] for r in results)
    after = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
    assert any("max_over_frames" in p for p in after - before), after - before  # blocks ran on the cluster

    local = threads_store
    for key in teacher_keys(local):
        for split in ("train", "test"):
            build_teacher_cache(local, key, split)  # dask's threads, in this process
            assert_same_cache(TeacherCache(cfg.store), TeacherCache(local.store), key, split)


def assert_same_cache(theirs, ours, key: str, split: str) -> None:
    has = theirs.info(key, split)["has_video_sim"]
    assert has == ours.info(key, split)["has_video_sim"] and has is (split == "test")  # the evaluated split
    if has:
        np.testing.assert_array_equal(theirs.video_sim(key, split)[0], ours.video_sim(key, split)[0])
    for a, b in zip(theirs.positive_frames(key, split), ours.positive_frames(key, split)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_local_dask_runs_extraction_and_teacher_on_its_own_cluster(dataset, threads_store, tmp_path):
    from flows.ingest import ingest_flow_for
    from flows.model import teacher_flow
    from stages.teacher import build_teacher_cache
    from storage.teacher_cache import TeacherCache

    cfg = make_config(tmp_path, dataset, str(tmp_path / "s.zarr"), kind="local-dask", workers=2)
    state = ingest_flow_for(cfg)(cfg, return_state=True)
    assert state.is_completed(), state.message
    store = FeatureStore(cfg.store)
    writers = {pid_of(commits_and_starts(store, i)[0][0]) for i in range(SHARDS)}
    assert os.getpid() not in writers  # worker processes of the flow's own cluster wrote the shards
    assert_same_store(threads_store.store, cfg.store)

    results = teacher_flow(cfg)  # on a local cluster of its own
    assert results and not any(r["skipped"] for r in results)
    for r in results:
        build_teacher_cache(threads_store, r["teacher"], r["split"])  # in this process; skipped if built
        assert_same_cache(TeacherCache(cfg.store), TeacherCache(threads_store.store), r["teacher"], r["split"])


@pytest.mark.slow
def test_train_and_evaluate_run_on_a_cluster_worker_like_in_process(dataset, threads_store, cluster, tmp_path):
    """runner: dask sends the train and evaluate tasks to a worker of the cluster (where a GPU would
    be); the model it trains is the one this process trains from the same store and config."""
    from flows.model import evaluate_flow_for, teacher_flow, train_flow_for
    from stages.evaluate import evaluate_run
    from stages.train import train

    small = {"train.epochs": 2, "train.hidden": 32, "train.heads": 4, "train.batch_videos": 2, "train.device": "cpu"}
    path = write_config(tmp_path, dataset, threads_store.store, shard_size=2)
    here = load_config(path, {**small, "runs_dir": str(tmp_path / "here")})
    there = load_config(path, {**small, "runs_dir": str(tmp_path / "there"), "runner.kind": "dask",
                               "runner.address": cluster[0].scheduler_address})
    teacher_flow(here)  # caches of the evaluated split (kept when another test built them)
    ours = train(here)
    trained = train_flow_for(there)(there)
    workers = {f"{host}:{pid}" for host, pid in cluster[1].run(lambda: (__import__("socket").gethostname(),
                                                                         os.getpid())).values()}
    assert trained["ran_on"] in workers and trained["ran_on"].rsplit(":", 1)[1] != str(os.getpid())
    # The workers run torch with their own thread count: the same model within float tolerance.
    assert trained["best_epoch"] == ours["best_epoch"]
    assert trained["best_val_SumR"] == pytest.approx(ours["best_val_SumR"], rel=1e-5, abs=1e-5)
    evaluated = evaluate_flow_for(there)(there)
    assert evaluated["ran_on"] in workers
    assert (tmp_path / "there" / there.name / "metrics.json").exists()
    local = evaluate_run(here)["methods"]
    for method, metrics in local.items():
        assert evaluated["methods"][method] == pytest.approx(metrics, abs=1e-6), method
