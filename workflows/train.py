"""Run any `TrainTask` on Dask: one worker by default, DistributedDataParallel across N.

The hand-rolled pattern of reference/ecosystem.md §3: list the workers (sorted, so ranks are
stable), find a free port on rank 0's host, submit one `train_rank` per worker pinned to it
(`allow_other_workers=False`, `pure=False`, no retries), and watch the futures. The ranks
form one process group, so they live and die together: a worker lost mid-run (its nanny may
restart it under a new address, but a new process cannot rejoin a running group) cancels the
whole run with a clear message; `resume=True` continues from the last checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.training import DistEnv, RunDir, TrainConfig, TrainTask
from pipeline.training.prepare import prepare_run  # noqa: F401 - also imported from here

log = logging.getLogger(__name__)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def train_rank(task: TrainTask, config: TrainConfig, run_path: str, rank: int, world_size: int, local_rank: int,
               init_method: str | None, resume: bool, stop_after: int | None = None,
               timeout_s: float = 600.0) -> dict[str, Any]:
    """One rank's whole run, inside a Dask worker (or any process)."""
    from pipeline.training import train
    from pipeline.training.distributed import destroy_process_group, init_process_group

    env = DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=config.device)
    init_process_group(env, init_method or "", timeout_s)
    try:
        result = train(task, config, RunDir(run_path), env, resume=resume, stop_after=stop_after)
    finally:
        destroy_process_group()
    return {"step": result.step, "total_steps": result.total_steps,
            "final_dir": str(result.final_dir) if result.final_dir else None, "last_metrics": result.last_metrics}


def _ranks(client) -> list[tuple[str, str, int]]:
    """(worker address, host, local rank) in rank order."""
    info = client.scheduler_info()["workers"]
    if not info:
        raise PipelineError("the Dask cluster has no workers")
    out, per_host = [], {}
    for addr in sorted(info):
        host = info[addr]["host"]
        out.append((addr, host, per_host.get(host, 0)))
        per_host[host] = per_host.get(host, 0) + 1
    return out


def run_training(task: TrainTask, config: TrainConfig, run_path: str | Path, *, workers: int | None = None,
                 scheduler: str | None = None, resume: bool = False, extra_config: dict[str, Any] | None = None,
                 stop_after: int | None = None, poll_s: float = 0.5, client=None) -> dict[str, Any]:
    """Train on a Dask cluster (started here, `scheduler`, or `client`); returns rank 0's result."""
    from workflows.cluster import dask_client

    run = RunDir(run_path)
    prepare_run(run, task, config, resume=resume, extra=extra_config)
    with dask_client(workers=workers, scheduler=scheduler, device=config.device, client=client) as client:
        ranks = _ranks(client)
        world = len(ranks)
        init_method = None
        if world > 1:
            port = client.submit(_free_port, workers=[ranks[0][0]], allow_other_workers=False, pure=False).result()
            init_method = f"tcp://{ranks[0][1]}:{port}"
        log.info("training %s on %d Dask worker(s)%s", task.name, world,
                 f" (DDP, {'nccl' if config.device.startswith('cuda') else 'gloo'})" if world > 1 else "")
        futures = [client.submit(train_rank, task, config, str(run.path), r, world, local, init_method, resume,
                                 stop_after, workers=[addr], allow_other_workers=False, pure=False, retries=0,
                                 key=f"train-{task.name}-rank{r}-{time.time_ns()}")
                   for r, (addr, _host, local) in enumerate(ranks)]
        return _watch(client, futures, ranks, run, poll_s)


def _scheduler_workers(dask_scheduler=None) -> list[str]:
    return list(dask_scheduler.workers)


def _lost_worker(client, ranks, confirm_s: float = 2.0) -> tuple[int, str] | None:
    """The first rank whose worker the scheduler no longer has, asked twice `confirm_s` apart.

    Asked of the scheduler itself: `client.scheduler_info()` may hand back a cached identity
    without per-worker entries (a busy run was once stopped as "lost" while both ranks trained
    on), and one look can catch a worker between heartbeats."""
    for attempt in range(2):
        alive = set(client.run_on_scheduler(_scheduler_workers))
        missing = [(r, addr) for r, (addr, _h, _l) in enumerate(ranks) if addr not in alive]
        if not missing:
            return None
        if attempt == 0:
            time.sleep(confirm_s)
    return missing[0]


def _watch(client, futures, ranks, run: RunDir, poll_s: float) -> dict[str, Any]:
    def stop(message: str) -> PipelineError:
        client.cancel(futures, force=True)
        ckpt = run.latest_checkpoint()
        where = f"the last checkpoint ({ckpt.name})" if ckpt else "the start (no checkpoint was written yet)"
        return PipelineError(f"{message}; the run stopped. Rerun the same command with --resume to continue "
                             f"from {where}", run.path)

    while True:
        lost = _lost_worker(client, ranks)
        if lost:
            raise stop(f"Dask worker {lost[1]} (rank {lost[0]}) was lost mid-run")
        failed = [(r, f) for r, f in enumerate(futures) if f.status == "error"]
        if failed:
            # a dead peer usually shows first as a collective error on a live rank: give the
            # scheduler a moment to notice the lost worker, which is the real cause
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                lost = _lost_worker(client, ranks)
                if lost:
                    raise stop(f"Dask worker {lost[1]} (rank {lost[0]}) was lost mid-run")
                time.sleep(0.25)
            r, f = failed[0]
            err = f.exception()
            if isinstance(err, PipelineError):
                client.cancel(futures, force=True)
                raise err
            raise stop(f"rank {r} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        if any(f.status == "cancelled" for f in futures):
            raise stop("a training task was cancelled")
        if all(f.status == "finished" for f in futures):
            return futures[0].result()
        time.sleep(poll_s)
