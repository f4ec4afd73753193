"""Where a stage's work runs. A stage asks its executor for these and knows nothing else:

    executor.map_shards(work, items, per_worker=..., gpu=..., retries=...)
        -> (index, result) of every item, in the order they finish
    executor.train(task, config, run_path, resume=..., stop_after=...)
        -> rank 0's result of the one training loop
    executor.world_size(config) -> how many ranks `train` will use (checked and recorded first)
    executor.check_paths(read=[...], write=[...])
        -> before any work: whoever runs it sees the inputs and can write the output

`InProcess` does it all in the calling process: the plain path, usable from a notebook and
what the run graph uses for a stage that already has a worker to itself.
`workflows.executors.DaskExecutor` maps shards over Dask workers (the per-worker resource
built once per worker) and trains with DistributedDataParallel across them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class PerWorker:
    """Something each worker builds once and hands to every work item it runs (the loaded
    detector); released when the map ends, failed or not. `key` names it across workers:
    equal keys mean the same thing built the same way."""
    key: str
    build: Callable[[], Any]


class ShardFailed(Exception):
    """Work item `index` raised `cause` (after the executor's retries)."""

    def __init__(self, index: int, cause: BaseException):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.index = index
        self.cause = cause


class Executor(Protocol):
    def map_shards(self, work: Callable[[Any, Any], Any], items: Sequence[Any], *, per_worker: PerWorker,
                   gpu: bool = False, retries: int = 0) -> Iterator[tuple[int, Any]]: ...

    def train(self, task, config, run_path: str, *, resume: bool,
              stop_after: int | None = None) -> dict[str, Any]: ...

    def world_size(self, config) -> int: ...

    def check_paths(self, *, read: Sequence[str] = (), write: Sequence[str] = ()) -> None: ...


def train_rank(task, config, run_path: str, rank: int, world_size: int, local_rank: int, init_method: str | None,
               resume: bool, stop_after: int | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """One rank's whole run, in whatever process the executor chose; the result is plain
    data so it can travel back from a worker."""
    from pipeline.training import DistEnv, RunDir, train
    from pipeline.training.distributed import destroy_process_group, init_process_group

    env = DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=config.device)
    init_process_group(env, init_method or "", timeout_s)
    try:
        result = train(task, config, RunDir(run_path), env, resume=resume, stop_after=stop_after)
    finally:
        destroy_process_group()
    return {"step": result.step, "total_steps": result.total_steps,
            "final_dir": str(result.final_dir) if result.final_dir else None, "last_metrics": result.last_metrics}


class InProcess:
    """Runs every work item and the whole training run here, one after another. A failing
    item is not retried (the same input fails the same way in the same process)."""

    def map_shards(self, work, items, *, per_worker: PerWorker, gpu: bool = False,
                   retries: int = 0) -> Iterator[tuple[int, Any]]:
        resource = per_worker.build()
        try:
            for index, item in enumerate(items):
                try:
                    result = work(item, resource)
                except PipelineError:
                    raise
                except Exception as err:  # noqa: BLE001 - the stage names the item
                    raise ShardFailed(index, err) from err
                yield index, result
        finally:
            del resource

    def world_size(self, config) -> int:
        return 1

    def check_paths(self, *, read: Sequence[str] = (), write: Sequence[str] = ()) -> None:
        """Nothing to check: the stage has checked its paths in this very process."""

    def train(self, task, config, run_path: str, *, resume: bool, stop_after: int | None = None) -> dict[str, Any]:
        return train_rank(task, config, str(run_path), 0, 1, 0, None, resume, stop_after)
