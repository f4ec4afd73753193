"""What every training stage (train-detector, pretrain, finetune) does around the one loop,
written once: settle the loop settings, check them and the paths against the executor's
ranks before any starts (the batch split; what each rank's process sees), hold a resumed run
to its record, write config.yaml, then train through the executor.

Loop settings come in layers, later ones winning (`TrainConfig.from_layers`): the task's
recipe, or on `--resume` the run's recorded settings; then an options file's `train:`
section; then the flags. A resumed run must be the same run: its task options and loop
settings must equal the record, except the settings that do not change what is computed
step by step (`RESUME_FREE`: where and how it runs (device, loader workers, torch.compile:
the same numbers to rounding), how it reports, and the length, so a finished run can be
extended with more steps).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from pipeline.errors import PipelineError
from pipeline.training import RunDir, TrainConfig, prepare_run

log = logging.getLogger(__name__)

RESUME_FREE = frozenset({"progress", "num_workers", "device", "compile", "steps", "epochs", "log_every",
                         "checkpoint_every", "val_every", "keep_checkpoints"})


def open_run(out: str | os.PathLike, resume: bool) -> RunDir:
    """The run directory, writable, and holding no other run unless resuming it."""
    run = RunDir(out)
    run.check_writable()
    if run.has_run() and not resume:
        raise PipelineError("already holds a training run (config.yaml); pass --resume to continue it "
                            "or choose another --out", run.path)
    return run


def loop_settings(run: RunDir, resume: bool, recipe: dict[str, Any],
                  layers: Sequence[dict[str, Any]] = ()) -> TrainConfig:
    """The recipe (or a resumed run's recorded settings) under the caller's layers."""
    base = dict(run.read_config().get("train") or recipe) if resume and run.has_run() else recipe
    return TrainConfig.from_layers(base, *layers)


def train_run(task, config: TrainConfig, out: str | os.PathLike, executor, *, resume: bool,
              record: dict[str, Any] | None = None, stop_after: int | None = None,
              inputs: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """Check that the executor's processes see `inputs` and can write `out`, a resume against
    the record and the batch against the ranks the executor will use, write config.yaml
    (`record` adds keys to it; `world_size` is the rank count), train."""
    run = RunDir(Path(out).resolve())
    resuming = resume and run.has_run()
    if resuming:    # before the executor starts a cluster: a refused resume is instant
        check_same_run(run, task, config)
    world = executor.world_size(config)
    check_batch_split(config, world)
    run.check_writable()
    executor.check_paths(read=[str(Path(p).resolve()) for p in inputs if p], write=[str(run.path)])
    if resuming:
        before = run.read_config().get("world_size")
        if before is not None and before != world:
            log.warning("resuming on %d rank(s); the run was started on %d: the global batch stays %d, but each "
                        "rank's share and random stream differ, so the steps from here are not those an "
                        "uninterrupted run would take", world, before, config.batch_size)
    prepare_run(run, task, config, resume=resume, extra={**(record or {}), "world_size": world})
    return executor.train(task, config, str(run.path), resume=resume, stop_after=stop_after)


def check_batch_split(config: TrainConfig, world: int) -> None:
    """The global batch must split evenly over ranks x accumulation micro-batches: checked
    before any rank starts, with what to change. (An uneven split would need per-rank loss
    weights to stay exact; an even one keeps every rank's step the same shape.)"""
    per = config.grad_accum * world
    if config.batch_size % per:
        near = sorted({n for n in (config.batch_size // per * per, (config.batch_size // per + 1) * per) if n})
        raise PipelineError(f"the batch size {config.batch_size} does not split over {world} rank(s) x "
                            f"{config.grad_accum} accumulation step(s): use --batch-size "
                            f"{' or '.join(map(str, near))}, or a rank count that divides it (--workers N)")


def check_same_run(run: RunDir, task, config: TrainConfig) -> None:
    recorded = run.read_config()
    differs = []
    if recorded.get("task") != task.name:
        differs.append(f"task {recorded.get('task')!r}")
    old_task = recorded.get("task_options") or {}
    differs += [f"task_options.{k}" for k, v in task.describe().items() if plain(v) != old_task.get(k)]
    old_train = recorded.get("train") or {}
    differs += [f"train.{k}" for k, v in config.to_dict().items()
                if k not in RESUME_FREE and plain(v) != old_train.get(k)]
    if differs:
        raise PipelineError(f"--resume with options other than the run's ({', '.join(differs[:6])}); pass the "
                            f"options it was started with, or choose another --out", run.path / "config.yaml")


def plain(value: Any) -> Any:
    """What the value reads back as from config.yaml (tuples -> lists), for comparisons and records."""
    return json.loads(json.dumps(value, default=str))
