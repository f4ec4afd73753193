"""The one training loop: pretraining, fine-tuning and detector training all run here.

Read top to bottom: set up (seed, model, data, optimiser, schedule, resume), then for every
optimiser step: `grad_accum` micro-batches of forward/backward under autocast, clip, step,
schedule; every `log_every` steps a metrics line; validation and checkpoints when due;
finally RUN/final/ (and RUN/best/, the best validation so far, when the config names a
`best_metric`). What differs per job lives in the `TrainingJob` (job.py); distribution is
`DistEnv` plus a DDP wrapper; mixed precision is one autocast context and a GradScaler.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from pipeline.errors import PipelineError
from pipeline.training.batches import EpochMicroBatches, SequentialBatches
from pipeline.training.checkpoint import load_resume, load_weights, rng_state, save_resume, set_rng_state
from pipeline.training.config import TrainConfig
from pipeline.training.distributed import DistEnv, all_reduce_mean, barrier
from pipeline.training.optim import build_optimizer
from pipeline.training.run_dir import RunDir
from pipeline.training.schedule import warmup_linear_schedule
from pipeline.training.job import TrainingJob

log = logging.getLogger(__name__)

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
PROGRESS_LINE_S = 20.0   # seconds between progress lines when there is no progress bar


class TaskLoss(torch.nn.Module):
    """The model with its task's loss as forward: what DDP wraps.

    DDP looks for unused parameters from the forward's outputs. A bare model returns outputs no
    loss reads when a task is switched off (the visual stream when pretraining trains matching
    alone), and DDP then waits for their gradients and fails; the loss and its parts are all
    it needs to see.
    """

    def __init__(self, task: TrainingJob, model: torch.nn.Module):
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch: Any, epoch: int):
        return self.task.loss(self.model, batch, epoch)


@dataclass
class TrainResult:
    step: int
    total_steps: int
    final_dir: Path | None
    last_metrics: dict[str, float]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _inputs_finite_note(batch: Any) -> str:
    """Whether a non-finite loss came from the data or from the optimisation, from the last batch."""
    bad: list[str] = []

    def walk(value: Any, name: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}[{i}]")

    walk(batch, "")
    if bad:
        return (f"the inputs are not finite: the last batch's {', '.join(bad[:5])} hold NaN or inf (check the "
                f"feature store with `lxmert-pipeline features verify`)")
    return "the last batch's inputs were finite (lower --lr, or resume from an earlier checkpoint)"


def _loader(dataset: torch.utils.data.Dataset, start: int, config: TrainConfig, seed: int,
            device: torch.device) -> torch.utils.data.DataLoader:
    # the generator keeps the DataLoader from drawing on the global torch RNG (dropout's),
    # which would make a resumed run diverge from an uninterrupted one
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=range(start, len(dataset)), num_workers=config.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed),
        persistent_workers=False, prefetch_factor=4 if config.num_workers else None)


def train(task: TrainingJob, config: TrainConfig, run: RunDir, env: DistEnv = DistEnv(), *,
          resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train `task`; rank 0 writes to `run`. `stop_after` ends early (as a kill would) for tests."""
    device = env.torch_device
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)

    # ---- model, data, length -------------------------------------------------------------
    model = task.build_model().to(device)
    train_data = task.train_data()
    val_data = task.val_data()
    micro = config.micro_batch_size(env.world_size)
    steps_per_epoch = len(train_data) // config.batch_size
    if steps_per_epoch == 0:
        raise PipelineError(f"{len(train_data)} training examples do not fill one batch of {config.batch_size}")
    total_steps = config.total_steps(len(train_data))

    # ---- optimiser, schedule, mixed precision ----------------------------------------------
    optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                betas=config.betas, eps=config.eps)
    scheduler = warmup_linear_schedule(optimizer, config.warmup, total_steps)
    autocast_dtype = _AUTOCAST.get(config.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16" and device.type == "cuda")

    def autocast():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    # ---- resume --------------------------------------------------------------------------
    step = 0
    if resume and (ckpt := run.latest_checkpoint()) is not None:
        load_weights(model, ckpt)
        state = load_resume(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        if env.is_main:
            run.truncate_metrics(step)
            log.info("resumed %s from %s (step %d of %d)", task.name, ckpt, step, total_steps)
    elif env.is_main and resume:
        # the lines of the attempt that died before its first checkpoint are redone from step 0
        run.truncate_metrics(0)
        log.info("no checkpoint in %s yet: starting from step 0", run.path)

    task_loss: torch.nn.Module = TaskLoss(task, model)
    if env.distributed:
        task_loss = DistributedDataParallel(
            task_loss, device_ids=[env.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=getattr(task, "find_unused_parameters", False))

    # ---- helpers: checkpoint, validate, log ------------------------------------------------
    def save_checkpoint() -> Path | None:
        path = None
        if env.is_main:
            def write(directory: Path) -> None:
                task.save_model(model, directory)
                save_resume(directory, step=step, epoch=step // steps_per_epoch, total_steps=total_steps,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict(), rng=rng_state())
            path = run.save_checkpoint(step, write, config.keep_checkpoints)
        barrier(env)
        return path

    def validate(epoch: int) -> dict[str, float]:
        # rank 0 validates the unwrapped model (no collectives inside); the others wait
        metrics: dict[str, float] = {}
        if env.is_main and val_data is not None and len(val_data):
            batches = SequentialBatches(val_data, config.val_batch_size or micro, config.seed, epoch)
            loader = _loader(batches, 0, config, config.seed, device)
            model.eval()
            with torch.no_grad(), autocast():
                metrics = task.validate(model, (_to_device(b, device) for b in loader), epoch)
            model.train()
            run.log({"step": step, "epoch": epoch, "split": "val", **metrics})
            keep_if_best(metrics, epoch)
        barrier(env)
        return metrics

    def keep_if_best(metrics: dict[str, float], epoch: int) -> None:
        # the best value so far lives on disk (best.json), so a resumed run compares against it
        if not config.best_metric:
            return
        name = config.best_metric.lstrip("-")
        sign = -1.0 if config.best_metric.startswith("-") else 1.0
        if name not in metrics or not math.isfinite(metrics[name]):
            return
        previous = run.best_record()
        if previous is None or sign * metrics[name] > sign * previous["value"]:
            run.save_best(lambda directory: task.save_model(model, directory),
                          {"metric": config.best_metric, "value": metrics[name], "step": step, "epoch": epoch})

    show_bar = env.is_main and config.progress is not False
    bar = None
    if show_bar:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, desc=task.name, unit="step",
                   disable=None if config.progress is None else False, dynamic_ncols=True)

    # without a bar (not a terminal, or a Dask worker), a progress line now and then instead
    progress_lines = env.is_main and (bar is None or bar.disable)
    last_line = time.perf_counter()

    # ---- the loop ------------------------------------------------------------------------
    window: dict[str, torch.Tensor] = {}
    window_count, window_start = 0, time.perf_counter()
    last: dict[str, float] = {}
    last_ckpt: Path | None = None
    model.train()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        batches = EpochMicroBatches(train_data, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                    grad_accum=config.grad_accum, rank=env.rank, world_size=env.world_size)
        micro_batches = iter(_loader(batches, start * config.grad_accum, config, config.seed + epoch, device))
        for _ in range(start, steps_per_epoch):
            for accum in range(config.grad_accum):
                batch = _to_device(next(micro_batches), device)
                syncing = accum == config.grad_accum - 1 or not env.distributed
                with contextlib.nullcontext() if syncing else task_loss.no_sync():
                    with autocast():
                        loss, parts = task_loss(batch, epoch)
                    scaler.scale(loss / config.grad_accum).backward()
                for k, v in {"loss": loss, **parts}.items():
                    v = v.detach().float()
                    window[k] = window[k] + v if k in window else v
                window_count += 1
            scaler.unscale_(optimizer)
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if bar is not None:
                bar.update(1)

            epoch_end = step % steps_per_epoch == 0
            done = step >= total_steps
            checkpoint_due = (config.checkpoint_every and step % config.checkpoint_every == 0) or epoch_end or done
            # a line at every checkpoint too, so a resumed run's logging windows match
            if step % config.log_every == 0 or checkpoint_due:
                means = {k: (v / window_count).item() for k, v in window.items()}
                means = all_reduce_mean(means, env)
                elapsed = time.perf_counter() - window_start
                last = means
                if not math.isfinite(means.get("loss", 0.0)) and config.precision != "fp16":
                    raise PipelineError(f"{task.name}: the loss became {means['loss']} at step {step}; "
                                        f"{_inputs_finite_note(batch)}", run.path)
                if env.is_main:
                    run.log({"step": step, "epoch": step / steps_per_epoch, "lr": lr, **means,
                             "examples_per_s": window_count * micro * env.world_size / max(elapsed, 1e-9)})
                    if bar is not None:
                        bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}")
                    if progress_lines and (done or time.perf_counter() - last_line >= PROGRESS_LINE_S):
                        last_line = time.perf_counter()
                        log.info("%s: step %d/%d  loss %.4f  %.0f examples/s", task.name, step, total_steps,
                                 means.get("loss", float("nan")), window_count * micro * env.world_size / max(elapsed, 1e-9))
                window, window_count, window_start = {}, 0, time.perf_counter()
            if (config.val_every and step % config.val_every == 0) or (not config.val_every and epoch_end) or done:
                validate(epoch)
            if checkpoint_due:
                last_ckpt = save_checkpoint()
            if done or (stop_after is not None and step >= stop_after):
                break
        if stop_after is not None and step >= stop_after:
            break

    if bar is not None:
        bar.close()
    final_dir = None
    if step >= total_steps and env.is_main:
        last_ckpt = last_ckpt or run.latest_checkpoint()
        if last_ckpt is not None:
            final_dir = run.publish_final(last_ckpt)
    barrier(env)
    return TrainResult(step=step, total_steps=total_steps, final_dir=final_dir, last_metrics=last)
