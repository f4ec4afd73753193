"""`DaskExecutor`: the stages' work on a Dask cluster (the executor contract is
pipeline/stages/executor.py; `InProcess` there is the plain path).

- The cluster: a local one started for the command (`workers`), an existing scheduler, or
  a given client (a stage of `lxmert-pipeline run`'s graph, inside a worker). It starts on
  first use, so a stage's input checks run before any worker does.
- `map_shards`: one task per item via `client.map(..., pure=False, retries=...)`, with
  `resources={"GPU": 1}` on GPUs (futures keep the restriction; docs/reference/ecosystem.md §2).
  The per-worker resource (the detector) is built by a `WorkerPlugin` when a worker starts,
  again on a restarted worker, and dropped from every worker when the map ends, however it
  ends; a lazy per-process cache covers a worker that joins without the plugin.
- `train`: the hand-rolled DDP pattern: list the workers (sorted, so ranks are stable), find
  a free port on rank 0's host, submit one `train_rank` per worker pinned to it
  (`allow_other_workers=False`, `pure=False`, no retries), and watch the futures. The ranks
  form one process group, so they live and die together: a worker lost mid-run (its nanny
  may restart it, but a new process cannot rejoin a running group) stops the whole run with
  a clear message; `--resume` continues from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from typing import Any, Iterator

from pipeline.errors import PipelineError
from pipeline.stages.executor import PerWorker, ShardFailed, train_rank

log = logging.getLogger(__name__)

try:
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency; keep import errors readable
    WorkerPlugin = object


class DaskExecutor:
    """Use as a context manager (`with DaskExecutor(workers=2) as executor:`): a cluster it
    started is closed on exit."""

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None, device: str = "cpu",
                 client=None):
        self.workers, self.scheduler, self.device = workers, scheduler, device
        self._given = client
        self._client = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client = None
        self._stack.close()

    @property
    def client(self):
        if self._client is None:
            from workflows.cluster import dask_client

            self._client = self._stack.enter_context(dask_client(
                workers=self.workers, scheduler=self.scheduler, device=self.device, client=self._given))
        return self._client

    # ---- shards ------------------------------------------------------------------------

    def map_shards(self, work, items, *, per_worker: PerWorker, gpu: bool = False,
                   retries: int = 0) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed

        client = self.client
        if gpu and not any(w.get("resources", {}).get("GPU") for w in client.scheduler_info()["workers"].values()):
            raise PipelineError("--device cuda, but no Dask worker advertises the GPU resource "
                                "(start workers with `dask worker ADDR --resources GPU=1`)")
        client.register_plugin(ResourcePlugin(per_worker), name=per_worker.key)
        token = uuid.uuid4().hex[:8]
        futures = []
        try:
            futures = client.map(_run_with_resource, list(items), work=work, per_worker=per_worker,
                                 key=[f"shard-{i:05d}-{token}" for i in range(len(items))],
                                 pure=False, retries=retries, resources={"GPU": 1} if gpu else None)
            index = {f.key: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except PipelineError:
                    raise
                except Exception as err:  # noqa: BLE001 - the stage names the item
                    raise ShardFailed(index[future.key], err) from err
                yield index[future.key], result
        finally:
            client.cancel(futures)
            client.unregister_worker_plugin(per_worker.key)

    # ---- training ----------------------------------------------------------------------

    def train(self, task, config, run_path: str, *, resume: bool, stop_after: int | None = None,
              poll_s: float = 0.5) -> dict[str, Any]:
        from pipeline.training import RunDir

        client = self.client
        ranks = _ranks(client)
        world = len(ranks)
        init_method = None
        if world > 1:
            port = client.submit(_free_port, workers=[ranks[0][0]], allow_other_workers=False, pure=False).result()
            init_method = f"tcp://{ranks[0][1]}:{port}"
        log.info("training %s on %d Dask worker(s)%s", task.name, world,
                 f" (DDP, {'nccl' if config.device.startswith('cuda') else 'gloo'})" if world > 1 else "")
        futures = [client.submit(train_rank, task, config, str(run_path), r, world, local, init_method, resume,
                                 stop_after, workers=[addr], allow_other_workers=False, pure=False, retries=0,
                                 key=f"train-{task.name}-rank{r}-{time.time_ns()}")
                   for r, (addr, _host, local) in enumerate(ranks)]
        return _watch(client, futures, ranks, RunDir(run_path), poll_s)


# ---- the per-worker resource -------------------------------------------------------------

class ResourcePlugin(WorkerPlugin):
    """Builds a `PerWorker` resource once when a worker starts (and again on a restarted one)."""

    def __init__(self, per_worker: PerWorker):
        self.per_worker = per_worker
        self.resource: Any = None
        self.error: BaseException | None = None

    def setup(self, worker=None) -> None:
        try:
            self.resource = self.per_worker.build()
        except Exception as err:  # noqa: BLE001 - reported by the first task, with its message
            self.error = err

    def teardown(self, worker=None) -> None:
        self.resource = None


_PROCESS_CACHE: dict[str, Any] = {}
_PROCESS_LOCK = threading.Lock()


def _resource(per_worker: PerWorker):
    """The worker's plugin-built resource, else one built lazily once per process."""
    try:
        from distributed import get_worker

        plugin = get_worker().plugins.get(per_worker.key)
    except (ImportError, ValueError):
        plugin = None
    if plugin is not None:
        if plugin.error is not None:
            raise plugin.error
        if plugin.resource is not None:
            return plugin.resource
    with _PROCESS_LOCK:
        if per_worker.key not in _PROCESS_CACHE:
            _PROCESS_CACHE[per_worker.key] = per_worker.build()
        return _PROCESS_CACHE[per_worker.key]


def _run_with_resource(item, *, work, per_worker: PerWorker):
    return work(item, _resource(per_worker))


# ---- DDP ranks ---------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


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


def _scheduler_workers(dask_scheduler=None) -> list[str]:
    return list(dask_scheduler.workers)


def _lost_worker(client, ranks, confirm_s: float = 2.0) -> tuple[int, str] | None:
    """The first rank whose worker the scheduler no longer has, asked twice `confirm_s` apart.

    Asked of the scheduler itself: `client.scheduler_info()` may hand back a cached identity
    without per-worker entries, and one look can catch a worker between heartbeats."""
    for attempt in range(2):
        alive = set(client.run_on_scheduler(_scheduler_workers))
        missing = [(r, addr) for r, (addr, _h, _l) in enumerate(ranks) if addr not in alive]
        if not missing:
            return None
        if attempt == 0:
            time.sleep(confirm_s)
    return missing[0]


def _watch(client, futures, ranks, run, poll_s: float) -> dict[str, Any]:
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
