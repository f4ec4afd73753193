"""`DaskExecutor`: the stages' work on a Dask cluster (the executor contract is
pipeline/stages/executor.py; `InProcess` there is the plain path).

- The cluster: a local one started for the command (`workers`), an existing scheduler, or
  a given client (a stage of `lxmert-pipeline run`'s graph, inside a worker). It starts on
  first use, so a stage's input checks run before any worker does.
- `check_paths`: one small call per worker before any work is scheduled: every worker must
  see the inputs and write the output folder at the same absolute path (a cluster shares
  its data through a filesystem every worker mounts at the same place; docs/cluster.md).
- `map_shards`: one task per item via `client.map(..., pure=False, retries=...)`, with
  `resources={"GPU": 1}` on GPUs (futures keep the restriction; docs/reference/ecosystem.md §2).
  The per-worker resource (the detector) is built by a `WorkerPlugin` when a worker starts
  (on GPU maps, only on workers advertising `GPU`), again on a restarted worker, and dropped
  from every worker when the map ends, however it ends; a lazy per-process cache covers a
  worker that joins without the plugin and is dropped too. A map whose GPU workers have all
  gone fails after `resource_wait_s` instead of waiting forever.
- `train`: the hand-rolled DDP pattern: the ranks are the workers (sorted, so ranks are
  stable) that have the `GPU` resource when training on CUDA, at most `workers` of them; the
  batch split is checked before anything starts; a free port on rank 0's host; one
  `train_rank` per worker pinned to it (`allow_other_workers=False`, `pure=False`, no
  retries), and the futures watched. The ranks form one process group, so they live and die
  together: a worker lost mid-run (its nanny may restart it, but a new process cannot rejoin
  a running group) stops the whole run with a clear message; `--resume` continues from the
  last checkpoint. Ctrl-C restarts the ranks' workers (a running Dask task cannot be
  cancelled, and a rank left running would train on and write the run directory).
- GPUs: each GPU worker gets its own card: the i-th GPU worker of a host uses visible device
  i modulo the devices it sees, so one worker per GPU started with its own
  CUDA_VISIBLE_DEVICES uses cuda:0 = its card, and workers that all see every card (a local
  cluster) spread over them; DDP's `set_device` gets the same index.
- Stock `dask worker` processes are daemonic under their nanny (no DataLoader processes)
  and run with OMP_NUM_THREADS=1: a run asking for loader workers is refused before it
  starts, naming the worker option, and a rank sets torch's threads to its worker's thread
  count.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from typing import Any, Iterator, Sequence

from pipeline.errors import PipelineError
from pipeline.stages.executor import InProcess, PerWorker, ShardFailed, train_rank

log = logging.getLogger(__name__)

try:
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency; keep import errors readable
    WorkerPlugin = object

# how long a GPU map waits for a worker with the GPU resource once none is left
RESOURCE_WAIT_S = 300.0
DAEMON_HINT = ("start the workers with `dask worker --no-nanny` or with DASK_DISTRIBUTED__WORKER__DAEMON=False "
               "(distributed.worker.daemon: False), or use --num-workers 0")


class DaskExecutor:
    """Use as a context manager (`with DaskExecutor(workers=2) as executor:`): a cluster it
    started is closed on exit. With `scheduler` (or `client`), `workers` limits the training
    ranks instead of starting workers."""

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None, device: str = "cpu",
                 client=None, resource_wait_s: float = RESOURCE_WAIT_S):
        self.workers, self.scheduler, self.device = workers, scheduler, device
        self.resource_wait_s = resource_wait_s
        self._given = client
        self._client = None
        self._ranks: list[tuple[str, str, int]] | None = None
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

            local = self.scheduler is None and self._given is None
            self._client = self._stack.enter_context(dask_client(
                workers=self.workers if local else None, scheduler=self.scheduler, device=self.device,
                client=self._given))
        return self._client

    # ---- paths -------------------------------------------------------------------------

    def check_paths(self, *, read: Sequence[str | os.PathLike] = (), write: Sequence[str | os.PathLike] = ()) -> None:
        """Every worker sees each `read` path and can write into each `write` folder (which
        this process has created) as this process does, at the same path: one line naming the
        first worker and path that fail."""
        client = self.client
        read = [str(p) for p in read if p is not None]
        token = f".lxmert-pipeline-seen-{uuid.uuid4().hex[:12]}"
        marks = []
        try:
            for folder in (str(p) for p in write if p is not None):
                mark = os.path.join(folder, token)
                with open(mark, "w", encoding="utf-8"):
                    pass
                marks.append(mark)
            problems = client.run(_path_problem, read, marks)
        finally:
            for mark in marks:
                with contextlib.suppress(OSError):
                    os.remove(mark)
        for worker, problem in sorted(problems.items()):
            if problem:
                raise PipelineError(f"Dask worker {worker} {problem[0]} (inputs and outputs must be on a filesystem "
                                    f"every worker mounts at the same path; docs/cluster.md)", problem[1])

    # ---- shards ------------------------------------------------------------------------

    def map_shards(self, work, items, *, per_worker: PerWorker, gpu: bool = False,
                   retries: int = 0) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed

        client = self.client
        if gpu:
            _pin_gpus(client, self._gpu_workers(client))
        client.register_plugin(ResourcePlugin(per_worker, gpu=gpu), name=per_worker.key)
        token = uuid.uuid4().hex[:8]
        futures = []
        try:
            futures = client.map(_run_with_resource, list(items), work=work, per_worker=per_worker, gpu=gpu,
                                 key=[f"shard-{i:05d}-{token}" for i in range(len(items))],
                                 pure=False, retries=retries, resources={"GPU": 1} if gpu else None)
            index = {f.key: i for i, f in enumerate(futures)}
            pending = as_completed(futures)
            no_gpu_since, looked = None, 0.0
            while not pending.is_empty():
                done = pending.next_batch(block=False)
                if not done:
                    if gpu and time.monotonic() - looked > 1.0:
                        looked = time.monotonic()
                        if _gpu_addresses(client):
                            no_gpu_since = None
                        elif no_gpu_since is None:
                            no_gpu_since = looked
                        elif looked - no_gpu_since > self.resource_wait_s:
                            raise PipelineError(
                                f"no Dask worker with the GPU resource for {self.resource_wait_s:.0f} s "
                                f"({sum(not f.done() for f in futures)} tasks waiting for one); start GPU "
                                f"workers (`dask worker ADDR --resources GPU=1`) and rerun: finished work is kept")
                    time.sleep(0.05)
                    continue
                for future in done:
                    try:
                        result = future.result()
                    except PipelineError:
                        raise
                    except Exception as err:  # noqa: BLE001 - the stage names the item
                        raise ShardFailed(index[future.key], err) from err
                    yield index[future.key], result
        finally:
            client.cancel(futures)
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(per_worker.key)
            with contextlib.suppress(Exception):
                client.run(_drop_cached, per_worker.key)

    def _gpu_workers(self, client) -> list[str]:
        found = _gpu_addresses(client)
        if not found:
            raise PipelineError("--device cuda, but no Dask worker advertises the GPU resource "
                                "(start workers with `dask worker ADDR --resources GPU=1`)")
        return found

    # ---- training ----------------------------------------------------------------------

    def world_size(self, config) -> int:
        """The number of ranks `train` will use for `config` (the workers chosen now), after
        checking that those workers can run it (loader workers need non-daemonic ones)."""
        self._ranks = self.ranks(config)
        if config.num_workers:
            found = self.client.run(_daemonic, workers=[a for a, _h, _l in self._ranks])
            daemonic = sorted(a for a, d in found.items() if d)
            if daemonic:
                raise PipelineError(f"--num-workers {config.num_workers} starts DataLoader processes, but Dask "
                                    f"worker {daemonic[0]} is daemonic and may not have children: {DAEMON_HINT}")
        return len(self._ranks)

    def ranks(self, config) -> list[tuple[str, str, int]]:
        """(worker address, host, device index) of each rank, in rank order: the workers with
        the GPU resource when `config.device` is CUDA (each with its own card, `gpu_plan`),
        else every worker; at most `workers` of them. The index is DDP's local rank."""
        client = self.client
        cuda = config.device.startswith("cuda")
        info = client.scheduler_info(n_workers=-1)["workers"]
        if not info:
            raise PipelineError("the Dask cluster has no workers")
        chosen = sorted(info)
        if cuda:
            chosen = self._gpu_workers(client)
        if self.workers is not None:
            if self.workers < 1:
                raise PipelineError(f"--workers must be at least 1, got {self.workers}")
            chosen = chosen[:self.workers]
        local = _gpu_indices(client, chosen) if cuda else _host_indices(info, chosen)
        return [(addr, info[addr]["host"], local[addr]) for addr in chosen]

    def train(self, task, config, run_path: str, *, resume: bool, stop_after: int | None = None,
              poll_s: float = 0.5) -> dict[str, Any]:
        from pipeline.stages.training import check_batch_split
        from pipeline.training import RunDir

        client = self.client
        ranks, self._ranks = self._ranks or self.ranks(config), None
        world = len(ranks)
        check_batch_split(config, world)
        init_method = None
        if world > 1:
            port = client.submit(_free_port, workers=[ranks[0][0]], allow_other_workers=False, pure=False).result()
            init_method = f"tcp://{ranks[0][1]}:{port}"
        log.info("training %s on %d Dask worker(s)%s", task.name, world,
                 f" (DDP, {'nccl' if config.device.startswith('cuda') else 'gloo'})" if world > 1 else "")
        futures = [client.submit(_rank_on_worker, task, config, str(run_path), r, world, local, init_method, resume,
                                 stop_after, workers=[addr], allow_other_workers=False, pure=False, retries=0,
                                 key=f"train-{task.name}-rank{r}-{time.time_ns()}")
                   for r, (addr, _host, local) in enumerate(ranks)]
        try:
            return _watch(client, futures, ranks, RunDir(run_path), poll_s)
        except KeyboardInterrupt:
            _stop_ranks(client, futures, ranks, RunDir(run_path))
            raise


class OnThisWorker(InProcess):
    """`InProcess` for a stage that already has a Dask worker to itself (the run graph's
    fine-tunings, side by side): trains here, on this worker's own GPU (`this_worker_gpu`)
    and with its threads, instead of every worker of a host on cuda:0."""

    def train(self, task, config, run_path: str, *, resume: bool, stop_after: int | None = None) -> dict[str, Any]:
        index = this_worker_gpu()[0] if config.device.startswith("cuda") else 0
        rank_threads()
        return train_rank(task, config, str(run_path), 0, 1, index, None, resume, stop_after)


# ---- paths and worker checks (these run on the workers) ----------------------------------

def _path_problem(read: list[str], marks: list[str]) -> tuple[str, str] | None:
    """(what is wrong, path) for the first path this worker cannot use, else None."""
    for path in read:
        if not os.path.exists(path):
            return "does not see the input", path
    for mark in marks:
        folder = os.path.dirname(mark)
        if not os.path.exists(mark):
            return "does not see the output folder the client created", folder
        probe = os.path.join(folder, f".lxmert-pipeline-probe-{uuid.uuid4().hex[:12]}")
        try:
            with open(probe, "w", encoding="utf-8"):
                pass
            os.remove(probe)
        except OSError as err:
            return f"cannot write the output folder ({err.strerror or err})", folder
    return None


def _daemonic() -> bool:
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


# ---- GPUs --------------------------------------------------------------------------------

def _gpu_addresses(client) -> list[str]:
    info = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(a for a, w in info.items() if w.get("resources", {}).get("GPU"))


def _visible_gpus() -> list[str]:
    """The physical ids of the GPUs this process may use, in its device order."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _host_indices(info: dict, addresses: Sequence[str]) -> dict[str, int]:
    """Each worker's index among `addresses` on its host (sorted, so stable)."""
    out, per_host = {}, {}
    for addr in sorted(addresses):
        host = info[addr]["host"]
        out[addr] = per_host.get(host, 0)
        per_host[host] = out[addr] + 1
    return out


def gpu_plan(client, addresses: Sequence[str]) -> dict[str, tuple[int, str]]:
    """{worker: (cuda device index it uses, physical GPU id)}: the i-th of `addresses` on a
    host takes the (i mod n)-th of the n devices it sees."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    local = _host_indices(info, addresses)
    visible = client.run(_visible_gpus, workers=list(addresses))
    plan = {}
    for addr in addresses:
        if not visible.get(addr):
            raise PipelineError(f"Dask worker {addr} advertises the GPU resource but sees no CUDA device "
                                f"(CUDA_VISIBLE_DEVICES={visible.get(addr)!r})")
        index = local[addr] % len(visible[addr])
        plan[addr] = (index, visible[addr][index])
    return plan


def this_worker_gpu() -> tuple[int, str]:
    """(cuda device index, physical GPU id) of the Dask worker running this task, by the rule
    of `gpu_plan` (asked of the scheduler for the hosts, of this process for its cards)."""
    from distributed import get_client, get_worker

    me = get_worker().address
    info = get_client().scheduler_info(n_workers=-1)["workers"]
    gpus = sorted(a for a, w in info.items() if w.get("resources", {}).get("GPU")) or [me]
    visible = _visible_gpus()
    if not visible:
        raise PipelineError(f"Dask worker {me} was asked for a GPU but sees no CUDA device")
    index = _host_indices(info, sorted({*gpus, me}))[me] % len(visible)
    return index, visible[index]


def _gpu_indices(client, addresses: Sequence[str]) -> dict[str, int]:
    return {addr: index for addr, (index, _physical) in gpu_plan(client, addresses).items()}


_WORKER_GPU: dict[str, int] = {}


def _set_worker_gpu(plan: dict[str, tuple[int, str]], dask_worker=None) -> None:
    if dask_worker is not None and dask_worker.address in plan:
        _WORKER_GPU["index"] = plan[dask_worker.address][0]


def _pin_gpus(client, addresses: Sequence[str]) -> None:
    client.run(_set_worker_gpu, gpu_plan(client, addresses), workers=list(addresses))


def _use_worker_gpu() -> None:
    """Make this thread's default CUDA device the worker's own card (CUDA's current device is
    per thread, and "cuda" without an index means it)."""
    if "index" in _WORKER_GPU:
        import torch

        if torch.cuda.is_available():   # a worker that only advertises GPU (tests) has none to set
            torch.cuda.set_device(_WORKER_GPU["index"])


# ---- the per-worker resource -------------------------------------------------------------

class ResourcePlugin(WorkerPlugin):
    """Builds a `PerWorker` resource once when a worker starts (and again on a restarted one);
    for a GPU map, only on workers that advertise the GPU resource."""

    def __init__(self, per_worker: PerWorker, gpu: bool = False):
        self.per_worker = per_worker
        self.gpu = gpu
        self.resource: Any = None
        self.error: BaseException | None = None

    def setup(self, worker=None) -> None:
        if self.gpu and not (worker is not None and worker.state.total_resources.get("GPU")):
            return
        try:
            if self.gpu:
                _use_worker_gpu()
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


def _drop_cached(key: str) -> None:
    with _PROCESS_LOCK:
        _PROCESS_CACHE.pop(key, None)
    _WORKER_GPU.clear()
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")     # not imported here just to find nothing to free
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _run_with_resource(item, *, work, per_worker: PerWorker, gpu: bool = False):
    if gpu:
        _use_worker_gpu()
    return work(item, _resource(per_worker))


# ---- DDP ranks ---------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rank_threads() -> int:
    """Set torch's threads for a rank on this worker: the worker's thread count, or more where
    the worker was started with more (a local cluster's OMP_NUM_THREADS); stock workers start
    torch with one thread (OMP_NUM_THREADS=1). Returns the count now in effect here."""
    import torch

    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError):
        nthreads = 1
    # OpenMP's thread count belongs to the calling thread: set it in the task's own thread
    torch.set_num_threads(max(torch.get_num_threads(), nthreads))
    return torch.get_num_threads()


def _rank_on_worker(*args, **kwargs) -> dict[str, Any]:
    rank_threads()
    return train_rank(*args, **kwargs)


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


def _stop_ranks(client, futures, ranks, run) -> None:
    """Ctrl-C: end the ranks' worker processes (their nannies start fresh ones) and say so."""
    client.cancel(futures, force=True)
    addresses = [addr for addr, _h, _l in ranks]
    note = ""
    try:
        client.restart_workers(addresses, timeout=60, raise_for_error=False)
    except Exception as err:  # noqa: BLE001 - a worker without a nanny cannot be restarted
        note = f" (could not restart every rank's worker: {type(err).__name__}: {err}; stop them by hand)"
    ckpt = run.latest_checkpoint()
    log.warning("interrupted: stopped the %d training rank(s) by restarting their Dask workers%s; rerun with "
                "--resume to continue from %s", len(ranks), note,
                ckpt.name if ckpt else "the start (no checkpoint was written yet)")


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
            r, f = failed[0]
            err = f.exception()
            if isinstance(err, PipelineError):
                client.cancel(futures, force=True)
                raise err
            # a dead peer usually shows first as a collective error on a live rank: give the
            # scheduler a moment to notice the lost worker, which is the real cause
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                lost = _lost_worker(client, ranks)
                if lost:
                    raise stop(f"Dask worker {lost[1]} (rank {lost[0]}) was lost mid-run")
                time.sleep(0.25)
            raise stop(f"rank {r} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        if any(f.status == "cancelled" for f in futures):
            raise stop("a training task was cancelled")
        if all(f.status == "finished" for f in futures):
            return futures[0].result()
        time.sleep(poll_s)
