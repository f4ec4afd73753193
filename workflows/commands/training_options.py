"""Options every training command shares (pretrain, finetune, train-detector).

The training settings of a run come from three layers, later ones winning
(`TrainConfig.from_layers`): the task's recipe (e.g. the reference's fine-tuning batch 32,
lr 5e-5), a `--config` YAML file (section `train:` for `TrainConfig` fields, `task:` for the
task's own options), then the flags given on the command line. What results is written to
RUN/config.yaml.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from pipeline.errors import PipelineError


def add_training_arguments(parser: argparse.ArgumentParser, *, options_file: bool = True) -> None:
    """The flags of every training command; `options_file=False` leaves `--config` to the
    command (train-detector's is a detector config)."""
    parser.add_argument("--out", required=True, metavar="RUN", help="run directory (config, metrics, checkpoints)")
    if options_file:
        parser.add_argument("--config", metavar="YAML",
                            help="options file: `train:` (loop settings) and `task:` sections")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps")
    length.add_argument("--epochs", type=float, help="passes over the training examples")
    parser.add_argument("--batch-size", type=int, help="global batch size (over all workers)")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--optimizer", choices=("bert", "adamw"), help="bert = the reference's BertAdam")
    parser.add_argument("--warmup", type=float, help="fraction of the run spent warming up")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast dtype")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the model for the training steps (minutes of compiling first; "
                             "an options file's `compile:` may name another backend)")
    parser.add_argument("--num-workers", "--loader-workers", type=int, dest="num_workers",
                        help="DataLoader worker processes per rank (default 0: in the training process)")
    parser.add_argument("--log-every", type=int, help="steps between metrics lines")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: each epoch)")
    parser.add_argument("--val-every", type=int, help="steps between validations (default: each epoch)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--workers", type=int, help="local Dask workers, more than one trains with DDP; with "
                        "--scheduler: at most this many of its workers become ranks")
    parser.add_argument("--scheduler", metavar="ADDR", help="use an existing Dask cluster, e.g. tcp://host:8786 "
                        "(paths must name the same files on every worker: docs/cluster.md)")


_FLAGS = ("steps", "epochs", "batch_size", "grad_accum", "lr", "optimizer", "warmup", "precision", "seed",
          "device", "compile", "num_workers", "log_every", "checkpoint_every", "val_every")


def read_options_file(path: str | None) -> dict[str, Any]:
    """The `--config` file as {"train": {...}, "task": {...}} (both optional)."""
    if not path:
        return {"train": {}, "task": {}}
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as err:
        raise PipelineError(f"cannot read the options file ({err.strerror or err})", path) from None
    except yaml.YAMLError as err:
        raise PipelineError(f"not valid YAML ({str(err).splitlines()[0]})", path) from None
    if not isinstance(data, dict) or set(data) - {"train", "task"}:
        raise PipelineError("an options file is a mapping with `train:` and/or `task:` sections", path)
    for key in ("train", "task"):
        if not isinstance(data.setdefault(key, {}) or {}, dict):
            raise PipelineError(f"section `{key}:` must be a mapping", path)
        data[key] = data[key] or {}
    return data


def flag_train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `TrainConfig` fields set by flags on the command line."""
    flags = {k: getattr(args, k) for k in _FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "no_progress", False):
        flags["progress"] = False
    return flags


def absolute_paths(args: argparse.Namespace, names: Sequence[str], maybe: Sequence[str] = ()) -> None:
    """Make the path flags `names` absolute here, before they travel to workers in other
    folders or on other hosts; the flags `maybe` only when they name a local file (else a
    hub name or a keyword such as `none`)."""
    from workflows.cluster import absolute

    for name in names:
        setattr(args, name, absolute(getattr(args, name, None)))
    for name in maybe:
        setattr(args, name, absolute(getattr(args, name, None), only_if_exists=True))


def executor(args: argparse.Namespace, layers: Sequence[dict[str, Any]] = ()):
    """The Dask executor the command's flags ask for: a local cluster (`--workers`) or an
    existing scheduler (`--scheduler`), for the device the settings layers name."""
    from workflows.executors import DaskExecutor

    device = next((layer["device"] for layer in reversed(layers) if layer.get("device")), "cpu")
    return DaskExecutor(workers=args.workers, scheduler=args.scheduler, device=device)
