"""What a training job supplies to the one training loop (`loop.train`).

Pretraining, VQA/GQA/NLVR2 fine-tuning and detector training differ only here. A job is a
small picklable object (it is shipped to every Dask worker, so it holds paths and options and
builds heavy things in its methods).

Data: a job's training data is a `BatchSource`: `len()` examples and
`make_batch(indices, rng, epoch) -> dict` that reads and collates those examples *as one
batch* (vectorised masking etc.). The loop decides which indices form each batch (a seeded
permutation per epoch, split by rank and accumulation step) and passes a numpy Generator
seeded from (seed, epoch, batch slot), so batches are deterministic and identical whether
produced in the main process or any DataLoader worker, and a resumed run re-creates them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
        """Collate the examples `indices` into a dict of tensors; all randomness from `rng`."""


@runtime_checkable
class TrainingJob(Protocol):
    name: str
    # DDP option: True when some parameters get no gradient in some steps (e.g. the QA head
    # before `qa_from_epoch`).
    find_unused_parameters: bool

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised (or pretrained-initialised) model; the loop seeds torch first."""

    def train_data(self) -> BatchSource: ...

    def val_data(self) -> BatchSource | None: ...

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, per-task losses). `model` is the bare model: the loop's DDP
        wrapper sits around this call (loop.TaskLoss)."""

    def validate(self, model: torch.nn.Module, batches: Iterable[dict[str, Any]], epoch: int) -> dict[str, float]:
        """Metrics over a held-out split (model is in eval mode, under no_grad)."""

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        """Write model.safetensors + config.json (the model package's format)."""

    def describe(self) -> dict[str, Any]:
        """The task's options, recorded in config.yaml."""
