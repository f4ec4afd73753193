"""Learning-rate schedule: linear warm-up, then linear decay to zero (BERT's `warmup_linear`).

The reference (src/lxrt/optimization.py) evaluates `warmup_linear(step / t_total, warmup)`
with a step counter that starts at 0, so the very first update has lr = 0. A `LambdaLR`
built from the same function and stepped after every optimiser step reproduces that exactly,
for AdamW and BertAdam alike.
"""

from __future__ import annotations

import torch


def warmup_linear(progress: float, warmup: float) -> float:
    """LR multiplier at `progress` = step / total_steps; `warmup` is a fraction of the run."""
    if progress < warmup:
        return progress / warmup
    if warmup >= 1.0:
        return 1.0
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


def warmup_linear_schedule(optimizer: torch.optim.Optimizer, warmup: float,
                           total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_linear(step / total_steps, warmup))
