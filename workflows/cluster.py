"""Where the work runs: a local Dask cluster started for one command, or an existing one.

- Local (default): a `LocalCluster` of process workers under nannies (a killed worker is
  restarted). On CPU, one worker by default; with `device="cuda"`, one worker per visible
  GPU, each advertising `resources={"GPU": 1}` so GPU tasks never share a card.
- Workers are started non-daemonic so a task may run a torch DataLoader with workers
  (Dask's default daemonic processes may not have children), and with torch threads set to
  their share of the cores instead of Dask's OMP_NUM_THREADS=1.
- `scheduler="tcp://host:8786"`: attach to a running cluster (SLURM via dask-jobqueue,
  Kubernetes, `dask scheduler` + `dask worker --resources GPU=1`; docs/cluster.md); nothing
  is started. Its workers run elsewhere: every path a command hands them is made absolute
  here first (`absolute`) and must name the same file on every worker.
- `client=`: an existing client, e.g. `worker_client()` inside a stage of `lxmert-pipeline
  run`'s graph, so the stage's own tasks (shards, DDP ranks) go to the same cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

log = logging.getLogger(__name__)


def quiet_dask_logs() -> None:
    """Dask logs every worker start and stop at INFO; users want the stages' lines. Kept at
    INFO when the CLI runs with --debug (the root logger at DEBUG)."""
    import distributed  # noqa: F401 - configures its loggers on import; quiet them after

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)


def absolute(path: str | os.PathLike | None, *, only_if_exists: bool = False) -> str | None:
    """`path` made absolute on this (the submitting) machine, so it means the same on every
    worker; None stays None. `only_if_exists`: a value naming no local file or folder (a hub
    name, `random`, `none`) is kept as it is."""
    if path is None or (only_if_exists and not os.path.exists(path)):
        return None if path is None else str(path)
    return os.path.abspath(os.path.expanduser(str(path)))


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None, device: str = "cpu",
                threads_per_worker: int | None = None, dashboard: bool = False,
                client: "distributed.Client | None" = None) -> Iterator["distributed.Client"]:
    """`client` given: use it as it is (a stage of a larger graph running inside a worker)."""
    import dask
    from distributed import Client, LocalCluster

    from pipeline.errors import PipelineError

    if client is not None:
        yield client
        return
    quiet_dask_logs()
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as err:
            raise PipelineError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None
        log.info("attached to Dask scheduler %s (%d workers)", scheduler, len(client.scheduler_info()["workers"]))
        try:
            yield client
        finally:
            client.close()
        return

    cores = os.cpu_count() or 1
    resources = None
    if device.startswith("cuda"):
        gpus = _gpu_count()
        if gpus == 0:
            raise PipelineError("--device cuda was asked for, but torch sees no CUDA device")
        workers = workers or gpus
        resources = {"GPU": 1}
    workers = workers or 1
    threads = threads_per_worker or max(1, cores // workers)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.nanny.pre-spawn-environ": env,
                          "distributed.scheduler.worker-saturation": 1.0,
                          "distributed.worker.memory.terminate": False}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               resources=resources, dashboard_address=":0" if dashboard else None,
                               silence_logs=logging.CRITICAL)
        client = Client(cluster)
        if dashboard:
            log.info("Dask dashboard: %s", client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
