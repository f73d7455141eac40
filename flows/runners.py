"""Task runners chosen by the config's `runner:`: threads in the flow's process, or a Dask cluster.

- threads:    shards one at a time in the flow's process (they share its decoder pool and models).
- dask:       an existing scheduler (`runner.address`); workers on any number of machines.
- local-dask: a `distributed.LocalCluster` of `runner.workers` processes, for this flow run only.

On Dask, every worker process loads its models and starts its decoder pool once and reuses
them for every shard it runs (the stages cache both per process). GPU work is annotated with
one `GPU` Dask resource, so a worker started with `--resources GPU=1` runs one such task at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from configs.schema import RunConfig, RunnerConfig

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("prvr.runners")

GPU = "GPU"  # the Dask resource name workers declare: `dask worker --resources GPU=1`
# Local clusters serve their dashboard on this machine only; busy port -> dask picks another and logs it.
LOCAL_DASHBOARD = "127.0.0.1:8787"


def allow_worker_children() -> None:
    """Let Dask worker processes start child processes (our decoder pool).

    Dask starts workers as daemonic processes by default, and a daemonic process may not have
    children. The nanny reads this setting each time it (re)starts a worker, so it is set for the
    process that hosts the nannies, for good: a killed worker is restarted later, under the same rule.
    Workers started with `dask worker` need DASK_DISTRIBUTED__WORKER__DAEMON=False instead.
    """
    import dask

    dask.config.set({"distributed.worker.daemon": False})


def cuda_devices() -> list[str]:
    """The CUDA devices this machine lets us use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[:count] if visible else [str(i) for i in range(count)]


class PinGPU(WorkerPlugin):
    """Worker i of a local cluster sees only GPU i mod n, set before any task touches CUDA."""

    name = "prvr-pin-gpu"

    def __init__(self, devices: list[str]):
        self.devices = list(devices)

    def setup(self, worker: Any) -> None:
        try:
            position = int(worker.name)
        except (TypeError, ValueError):
            position = 0
        os.environ["CUDA_VISIBLE_DEVICES"] = self.devices[position % len(self.devices)]


def local_cluster_kwargs(runner: RunnerConfig, gpus: list[str]) -> dict[str, Any]:
    """LocalCluster arguments: worker processes (not threads: torch and decoding hold the GIL)."""
    kwargs: dict[str, Any] = {
        "n_workers": runner.workers, "threads_per_worker": runner.threads_per_worker, "processes": True,
        "host": "127.0.0.1", "dashboard_address": LOCAL_DASHBOARD,
    }
    if gpus:
        kwargs["resources"] = {GPU: 1}
        kwargs["plugins"] = (PinGPU(gpus),)
    return kwargs


def task_runner_for(config: RunConfig, device: str | None = None) -> TaskRunner:
    """The task runner for GPU stages (extraction, training, evaluation), from `config.runner`;
    `device`: the stage's device setting (default extract.device)."""
    runner = config.runner
    device = device or config.extract.device
    if runner.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=1)
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    if runner.kind == "dask":
        return DaskTaskRunner(address=runner.address)
    allow_worker_children()
    gpus = cuda_devices() if device != "cpu" else []
    return DaskTaskRunner(cluster_class=LocalCluster, cluster_kwargs=local_cluster_kwargs(runner, gpus))


def _flow_dask_client() -> Client | None:
    """The Dask client of the running flow's task runner; None when it is not a Dask runner."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context else None
    if runner is None or type(runner).__name__ != "DaskTaskRunner":
        return None
    return runner.client  # type: ignore[attr-defined]


def gpu_resources(config: RunConfig, device: str | None = None) -> dict[str, float]:
    """Dask resources a GPU task must hold on this flow's runner: {"GPU": 1} or nothing.

    `device` (the stage's setting, default extract.device) cuda: always (tasks wait for a worker
    declaring a GPU). auto: when some worker of the cluster declares one. cpu, or the threads runner:
    nothing.
    """
    device = device or config.extract.device
    if config.runner.kind == "threads" or device == "cpu":
        return {}
    client = _flow_dask_client()
    if client is None:
        return {}
    try:
        info = client.scheduler_info(n_workers=-1)  # newer distributed lists only a few by default
    except TypeError:
        info = client.scheduler_info()
    workers = info.get("workers", {}).values()
    declared = sum(1 for w in workers if (w.get("resources") or {}).get(GPU, 0) >= 1)
    if device == "cuda":
        if not declared:
            log.warning("the stage's device is cuda but no worker of the cluster declares a %s resource yet; "
                        "GPU tasks wait for one (start workers with `--resources %s=1`)", GPU, GPU)
        return {GPU: 1}
    return {GPU: 1} if declared else {}


@contextlib.contextmanager
def holding(resources: dict[str, float]) -> Iterator[None]:
    """Tasks submitted inside hold `resources` on their Dask worker (dask annotations; prefect-dask
    passes them with the submission). Nothing to do without resources."""
    if not resources:
        yield
        return
    import dask

    with dask.annotate(resources=resources):
        yield


@contextlib.contextmanager
def dask_client(config: RunConfig) -> Iterator[Client | None]:
    """A distributed Client for dask collections (teacher caches) on the configured cluster, made
    current in this context so `scheduler=None` computations run there; None for threads."""
    runner = config.runner
    if runner.kind == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if runner.kind == "dask":
            target: Any = runner.address
        else:
            allow_worker_children()
            target = stack.enter_context(LocalCluster(**local_cluster_kwargs(runner, [])))
        client = stack.enter_context(Client(target, set_as_default=False))
        stack.enter_context(client.as_current())
        yield client


def settle_lost(future: Any) -> str | None:
    """Why a submitted task never reported back, or None when it did.

    Prefect records a task's own failures; a Dask task fails outside Prefect only when every worker
    that ran it died (KilledWorker, after `distributed.scheduler.allowed-failures` re-runs). Its task
    run would then stay Running in the UI: mark it Crashed (best effort) and return the reason.
    """
    wrapped = getattr(future, "wrapped_future", None)  # PrefectDaskFuture's distributed.Future
    if wrapped is None or getattr(wrapped, "status", None) != "error":
        return None
    error = wrapped.exception()
    reason = f"lost on the Dask cluster: {type(error).__name__}: {error}"
    try:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        with get_client(sync_client=True) as client:
            client.set_task_run_state(future.task_run_id, Crashed(message=reason[:2000]), force=True)
    except Exception as e:  # noqa: BLE001 - the run may never have reached the API; the store has the truth
        log.warning("could not mark task run %s crashed: %s", future.task_run_id, e)
    return reason
