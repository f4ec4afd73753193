"""Which examples form each batch: deterministic for (seed, epoch), split by rank.

Epoch e visits `permutation(len(data))` drawn from `default_rng([seed, e])`, dropping the
incomplete last global batch (the reference's drop_last). Global batch s is cut into
`grad_accum` micro-steps, each into `world_size` equal slices, one per rank. Item j of the
torch Dataset below is this rank's j-th micro-batch of the epoch, so starting a DataLoader
at j = step * grad_accum resumes mid-epoch exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.training.job import BatchSource


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


class EpochMicroBatches(torch.utils.data.Dataset):
    """Map-style dataset of one rank's micro-batches for one epoch (DataLoader batch_size=None)."""

    def __init__(self, data: BatchSource, *, seed: int, epoch: int, batch_size: int, grad_accum: int,
                 rank: int, world_size: int):
        self.data, self.seed, self.epoch = data, seed, epoch
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.rank, self.world_size = rank, world_size
        self.micro = batch_size // (grad_accum * world_size)
        self.steps = len(data) // batch_size
        self.order = epoch_order(len(data), seed, epoch)

    def __len__(self) -> int:
        return self.steps * self.grad_accum

    def indices(self, j: int) -> np.ndarray:
        step, accum = divmod(j, self.grad_accum)
        start = step * self.batch_size + (accum * self.world_size + self.rank) * self.micro
        return self.order[start:start + self.micro]

    def __getitem__(self, j: int) -> dict[str, Any]:
        step, accum = divmod(j, self.grad_accum)
        # one stream per (global batch, slice): independent of DataLoader workers and of resumes
        rng = np.random.default_rng([self.seed, self.epoch, step, accum * self.world_size + self.rank])
        return self.data.make_batch(self.indices(j), rng, self.epoch)


class SequentialBatches(torch.utils.data.Dataset):
    """Validation: every example once in order, fixed randomness (same masks every time)."""

    def __init__(self, data: BatchSource, batch_size: int, seed: int, epoch: int = 0):
        self.data, self.batch_size, self.seed, self.epoch = data, batch_size, seed, epoch

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, j: int) -> dict[str, Any]:
        idx = np.arange(j * self.batch_size, min((j + 1) * self.batch_size, len(self.data)))
        return self.data.make_batch(idx, np.random.default_rng([self.seed, 1_000_003, j]), self.epoch)
