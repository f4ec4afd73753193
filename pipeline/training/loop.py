"""The one training loop: pretraining, fine-tuning and detector training all run here.

Read top to bottom: set up (seed, model, data, optimiser, schedule, resume), then for every
optimiser step: `grad_accum` micro-batches of forward/backward under autocast, unscale (fp16),
clip, step, schedule; every `log_every` steps a metrics line (and a loop.jsonl line: speed and
the share of time spent waiting for data); validation and checkpoints when due; finally
RUN/final/ (and RUN/best/, the best validation so far, when the config names a `best_metric`).
What differs per job lives in the `TrainingJob` (job.py); distribution is `DistEnv` plus a DDP
wrapper; mixed precision is one autocast context and a GradScaler (enabled for fp16 only).

On a GPU the same loop runs with: batches from pinned memory copied one step ahead on a side
stream (prefetch.py), bf16 autocast (or fp16 with loss scaling), torch's fused AdamW or
BertAdam's multi-tensor update (optim.py), optionally `torch.compile` (`compile`), DDP over
NCCL (distributed.py), and the CUDA random stream in every checkpoint, so that a resumed run
continues the same dropout masks.
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
from pipeline.training.prefetch import DeviceBatches
from pipeline.training.run_dir import LOOP, RunDir
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


def compiled(model: torch.nn.Module, setting: bool | str) -> torch.nn.Module:
    """What runs the training steps: `model`, or `torch.compile(model)` (True = inductor, a
    string names the backend). The compiled wrapper shares the model's parameters; the loop
    saves, loads and validates `model` itself, so checkpoints keep the module's own names
    (no `_orig_mod.` prefix) and load with or without compile."""
    if not setting:
        return model
    return torch.compile(model, backend="inductor" if setting is True else setting)


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


def train(task: TrainingJob, config: TrainConfig, run: RunDir, env: DistEnv | None = None, *,
          resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train `task`; rank 0 writes to `run`. `env`: this process's rank (default: the only one,
    on `config.device`). `stop_after` ends early (as a kill would) for tests."""
    env = env or DistEnv(device=config.device)
    device = env.torch_device
    if device.type == "cuda":
        # this thread's current card: side streams, autocast and the job's own "cuda" tensors
        torch.cuda.set_device(device)
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
    # fp16's narrow range flushes small gradients to zero unless the loss is scaled up first;
    # bf16 has fp32's range and needs no scaler
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

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
        if state["scaler"]:    # an fp32 or bf16 run's scaler is disabled and saves nothing
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], device)
        step = int(state["step"])
        if env.is_main:
            run.truncate_metrics(step)
            log.info("resumed %s from %s (step %d of %d)", task.name, ckpt, step, total_steps)
    elif env.is_main and resume:
        # the lines of the attempt that died before its first checkpoint are redone from step 0
        run.truncate_metrics(0)
        log.info("no checkpoint in %s yet: starting from step 0", run.path)

    task_loss: torch.nn.Module = TaskLoss(task, compiled(model, config.compile))
    if env.distributed:
        task_loss = DistributedDataParallel(
            task_loss, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(task, "find_unused_parameters", False))

    # ---- helpers: checkpoint, validate, log ------------------------------------------------
    def save_checkpoint() -> Path | None:
        path = None
        if env.is_main:
            def write(directory: Path) -> None:
                task.save_model(model, directory)
                save_resume(directory, step=step, epoch=step // steps_per_epoch, total_steps=total_steps,
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            scaler=scaler.state_dict(), rng=rng_state(device))
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
                metrics = task.validate(model, DeviceBatches(loader, device), epoch)
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
    # a logging window: summed losses, micro-batches, seconds spent in next(batches), and
    # optimiser steps the fp16 scaler skipped
    window: dict[str, torch.Tensor] = {}
    window_count, data_wait, skipped = 0, 0.0, 0
    window_start = time.perf_counter()
    last: dict[str, float] = {}
    last_ckpt: Path | None = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        plan = EpochMicroBatches(train_data, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                 grad_accum=config.grad_accum, rank=env.rank, world_size=env.world_size)
        micro_batches = DeviceBatches(_loader(plan, start * config.grad_accum, config, config.seed + epoch, device),
                                      device)
        for _ in range(start, steps_per_epoch):
            for accum in range(config.grad_accum):
                asked = time.perf_counter()
                batch = next(micro_batches)
                data_wait += time.perf_counter() - asked
                syncing = accum == config.grad_accum - 1 or not env.distributed
                with contextlib.nullcontext() if syncing else task_loss.no_sync():
                    with autocast():
                        loss, parts = task_loss(batch, epoch)
                    scaler.scale(loss / config.grad_accum).backward()
                for k, v in {"loss": loss, **parts}.items():
                    v = v.detach().float()
                    window[k] = window[k] + v if k in window else v
                window_count += 1
            scaler.unscale_(optimizer)       # clip the true gradients, not the scaled ones
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            lr = optimizer.param_groups[0]["lr"]
            scale = scaler.get_scale()
            scaler.step(optimizer)           # fp16: no update when a gradient overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if scaler.get_scale() < scale:
                # an overflow lowered the scale and skipped the update: the schedule counts updates
                # made, so an fp16 run warms up and decays over as many updates as any other
                skipped += 1
            else:
                scheduler.step()
            step += 1
            if bar is not None:
                bar.update(1)

            epoch_end = step % steps_per_epoch == 0
            done = step >= total_steps
            checkpoint_due = (config.checkpoint_every and step % config.checkpoint_every == 0) or epoch_end or done
            # a line at every checkpoint too, so a resumed run's logging windows match
            logging_due = step % config.log_every == 0 or checkpoint_due
            if logging_due:
                means = {k: (v / window_count).item() for k, v in window.items()}
                means = all_reduce_mean({**means, _WAIT: data_wait}, env)
                waited = means.pop(_WAIT)    # seconds in next(micro_batches), the ranks' mean
                elapsed = time.perf_counter() - window_start
                rate = window_count * micro * env.world_size / max(elapsed, 1e-9)
                last = means
                # fp16 overflows now and then by design (the scaler skips those steps): only a
                # scale halved below 1 (17 overflows in a row from 65536) means it diverged
                if not math.isfinite(means.get("loss", 0.0)) and (config.precision != "fp16"
                                                                  or scaler.get_scale() < 1.0):
                    raise PipelineError(f"{task.name}: the loss became {means['loss']} at step {step}; "
                                        f"{_inputs_finite_note(batch)}", run.path)
                if env.is_main:
                    run.log({"step": step, "epoch": step / steps_per_epoch, "lr": lr, **means,
                             "examples_per_s": rate})
                    run.log(_loop_record(step, elapsed, rate, waited, device, scaler, skipped), LOOP)
                    if bar is not None:
                        bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}")
                    if progress_lines and (done or time.perf_counter() - last_line >= PROGRESS_LINE_S):
                        last_line = time.perf_counter()
                        log.info("%s: step %d/%d  loss %.4f  %.0f examples/s  %.0f%% waiting for data", task.name,
                                 step, total_steps, means.get("loss", float("nan")), rate,
                                 100 * waited / max(elapsed, 1e-9))
                window, window_count, data_wait, skipped = {}, 0, 0.0, 0
            if (config.val_every and step % config.val_every == 0) or (not config.val_every and epoch_end) or done:
                validate(epoch)
            if checkpoint_due:
                last_ckpt = save_checkpoint()
            if logging_due:
                window_start = time.perf_counter()   # validation and checkpoints are not training time
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


_WAIT = "_data_wait_s"


def _loop_record(step: int, seconds: float, rate: float, data_wait: float, device: torch.device,
                 scaler: torch.amp.GradScaler, skipped: int) -> dict[str, Any]:
    """A loop.jsonl line: how one logging window ran. `data_wait_share` is the part of its
    wall time the loop spent in `next(batches)` (making or waiting for the batch, starting its
    copy to the device): near 0 when the input pipeline keeps up, near 1 when it is the
    bottleneck. On CUDA the window's time ends with the losses' read-back, which waits for the
    GPU, so the share is of the true step time."""
    record: dict[str, Any] = {"step": step, "seconds": round(seconds, 4), "examples_per_s": rate,
                              "data_wait_s": round(data_wait, 4), "data_wait_share": data_wait / max(seconds, 1e-9)}
    if device.type == "cuda":
        record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if scaler.is_enabled():
        record["loss_scale"] = scaler.get_scale()
        record["skipped_steps"] = skipped
    return record
