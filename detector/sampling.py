"""Balanced sampling of labelled anchors / RoIs (detectron2's `subsample_labels`).

Faster R-CNN trains each head on a fixed-size sample per image: at most
`num_samples * positive_fraction` positives drawn at random, the rest filled with negatives
(RPN: 256 anchors, half positive; RoI heads: 512 RoIs, a quarter positive). Without the cap
the ~99% background anchors would drown the loss.
"""

from __future__ import annotations

import torch


def subsample_labels(labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (N,): -1 ignore, `bg_label` negative, anything else positive.

    -> (positive indices, negative indices) into `labels`, in random order; at most
    int(num_samples * positive_fraction) positives, and negatives fill up to num_samples.
    Randomness: `generator`, else torch's global RNG (which the training loop checkpoints).
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label)).flatten()
    negative = torch.nonzero(labels == bg_label).flatten()
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    # randperm on the CPU: the same draws on every device, so a CUDA run samples like a CPU run
    perm_pos = torch.randperm(positive.numel(), generator=generator)[:num_pos].to(labels.device)
    perm_neg = torch.randperm(negative.numel(), generator=generator)[:num_neg].to(labels.device)
    return positive[perm_pos], negative[perm_neg]
