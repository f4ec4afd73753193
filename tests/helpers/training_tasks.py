"""Small real training tasks for the loop's tests: an MLP classifier on Gaussian clusters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import save_file


class ClusterData:
    """`n` points in `dim` dimensions around `classes` centres; optional per-batch noise from rng."""

    def __init__(self, n: int, dim: int, classes: int, seed: int, noise: float):
        g = np.random.default_rng(seed)
        centres = g.normal(0, 2, (classes, dim))
        self.y = g.integers(0, classes, n)
        self.x = (centres[self.y] + g.normal(0, 1, (n, dim))).astype(np.float32)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.y)

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
        x = self.x[indices] + self.noise * rng.standard_normal((len(indices), self.x.shape[1])).astype(np.float32)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(self.y[indices])}


@dataclass
class ClusterTask:
    name: str = "clusters"
    find_unused_parameters: bool = False
    n: int = 96
    dim: int = 8
    classes: int = 3
    hidden: int = 16
    dropout: float = 0.1
    noise: float = 0.1
    die_at_step: int | None = None      # rank 1 kills its own process at this step (DDP failure test)
    seen: list = field(default_factory=list)

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(self.dim, self.hidden), torch.nn.LayerNorm(self.hidden),
                                   torch.nn.GELU(), torch.nn.Dropout(self.dropout),
                                   torch.nn.Linear(self.hidden, self.classes))

    def train_data(self) -> ClusterData:
        return ClusterData(self.n, self.dim, self.classes, 0, self.noise)

    def val_data(self) -> ClusterData:
        return ClusterData(32, self.dim, self.classes, 1, 0.0)

    def loss(self, model, batch, epoch):
        if self.die_at_step is not None:
            import os
            import signal

            import torch.distributed as dist
            self.seen.append(1)
            if dist.is_initialized() and dist.get_rank() == 1 and len(self.seen) > self.die_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
        logits = model(batch["x"])
        ce = torch.nn.functional.cross_entropy(logits, batch["y"])
        return ce, {"ce": ce}

    def validate(self, model, batches: Iterable[dict], epoch: int) -> dict[str, float]:
        right = total = 0
        for b in batches:
            right += int((model(b["x"]).argmax(-1) == b["y"]).sum())
            total += len(b["y"])
        return {"accuracy": right / total}

    def save_model(self, model, directory: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps({"hidden": self.hidden}))

    def describe(self) -> dict[str, Any]:
        return {"n": self.n, "dim": self.dim}


def assert_same_weights(a_dir: str | Path, b_dir: str | Path, atol: float = 1e-6) -> None:
    """The `model.safetensors` of two checkpoint directories hold the same tensors (to `atol`)."""
    from safetensors.torch import load_file

    a = load_file(str(Path(a_dir) / "model.safetensors"))
    b = load_file(str(Path(b_dir) / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0)
