"""`TrainConfig`: every knob of the training loop, written to RUN/config.yaml."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    # length: exactly one of steps / epochs (optimiser steps; an epoch is len(data) // batch_size steps)
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 256            # global: summed over ranks and accumulation micro-batches
    grad_accum: int = 1
    optimizer: str = "bert"          # "bert" (reference BertAdam) | "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    warmup: float = 0.05             # fraction of the run spent warming up
    clip_norm: float | None = 1.0    # global gradient-norm clip; None = off
    precision: str = "fp32"          # autocast dtype for forward passes; fp16 adds a gradient scaler
    # torch.compile the model for the training steps: True = inductor, a string names another
    # backend (e.g. "aot_eager"); checkpoints hold the plain module's weights either way
    compile: bool | str = False
    seed: int = 9595
    log_every: int = 10              # steps between metrics.jsonl lines
    val_every: int | None = None     # steps between validations; None = at each epoch end
    val_batch_size: int | None = None
    checkpoint_every: int | None = None   # steps; None = at each epoch end
    # validation metric whose best value so far is kept in RUN/best/ (the reference's BEST.pth);
    # a leading "-" means lower is better ("-loss"); None = no best checkpoint
    best_metric: str | None = None
    keep_checkpoints: int = 2
    num_workers: int = 0             # DataLoader workers per rank
    device: str = "cpu"
    progress: bool | None = None     # progress bar on rank 0; None = only on a terminal
    extra: dict[str, Any] = field(default_factory=dict)   # task options, recorded for reproduction

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if self.steps is not None and self.steps <= 0 or self.epochs is not None and self.epochs <= 0:
            raise ValueError("steps / epochs must be positive")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.compile, (bool, str)) or self.compile == "":
            raise ValueError(f"compile must be true, false or a torch.compile backend name, got {self.compile!r}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ValueError("batch_size and grad_accum must be positive")

    def micro_batch_size(self, world_size: int) -> int:
        per = self.grad_accum * world_size
        if self.batch_size % per:
            raise ValueError(f"batch size {self.batch_size} is not divisible by grad_accum x ranks = {per}")
        return self.batch_size // per

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def total_steps(self, num_examples: int) -> int:
        """Optimiser steps of a run over `num_examples` (an epoch is num_examples // batch_size)."""
        return self.steps or max(1, int(round(self.epochs * (num_examples // self.batch_size))))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        unknown = unknown_fields(cls, values)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_layers(cls, *layers: dict[str, Any]) -> "TrainConfig":
        """The settings of a run from layers, later ones winning: a recipe (or a resumed run's
        record), an options file's `train:` section, the flags. A layer that sets the length
        (steps or epochs) replaces the earlier layers' length. Flags not given are left out of
        their layer; a None in a layer is a setting (e.g. `clip_norm: null` turns clipping off)."""
        from pipeline.errors import UsageError

        values: dict[str, Any] = {}
        for layer in layers:
            if "steps" in layer or "epochs" in layer:
                values.pop("steps", None)
                values.pop("epochs", None)
            values.update(layer)
        if "steps" not in values and "epochs" not in values:
            raise UsageError("give the run's length: --steps N or --epochs N")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as err:
            raise UsageError(f"training options: {err}") from None


def require_known_fields(cls, values: dict[str, Any], what: str) -> None:
    """ValueError naming the unknown keys of `values` and the known ones (`what`: whose options)."""
    unknown = unknown_fields(cls, values)
    if unknown:
        known = sorted(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"unknown {what} options {unknown}; known: {known}")


def unknown_fields(cls, values: dict[str, Any]) -> list[str]:
    """Keys of `values` that are not fields of the dataclass `cls` (a typo in a config file
    must be an error, not a silently ignored setting)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return sorted(set(values) - names)
