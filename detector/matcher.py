"""Assigning ground-truth boxes to anchors / proposals by IoU (detectron2's `Matcher`).

`Matcher(thresholds, labels)` splits the best IoU of every prediction into the intervals
[-inf, t0), [t0, t1), ..., [tk, inf) and gives each interval a label: 1 foreground,
0 background, -1 ignored. The RPN uses thresholds (0.3, 0.7) with labels (0, -1, 1) and
`allow_low_quality_matches=True`: every ground truth also claims the prediction(s) it
overlaps most, even below 0.7, so a small or oddly shaped object still gets a positive
anchor (Faster R-CNN §3.1.2). The RoI heads use (0.5,) with labels (0, 1) and no
low-quality matches (the gt boxes are appended to the proposals instead).
"""

from __future__ import annotations

import torch


class Matcher:
    def __init__(self, thresholds: list[float] | tuple[float, ...], labels: list[int] | tuple[int, ...],
                 allow_low_quality_matches: bool = False):
        thresholds = [float(t) for t in thresholds]
        if any(a > b for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"matcher thresholds must be increasing, got {thresholds}")
        if len(labels) != len(thresholds) + 1 or any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"need len(thresholds) + 1 labels in {{-1, 0, 1}}, got {labels} for {thresholds}")
        self.thresholds = [-float("inf"), *thresholds, float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, N) IoU of G gt boxes with N predictions -> (matches (N,) int64 index of the best
        gt, match_labels (N,) int8 in {-1, 0, 1}). With G == 0 every prediction gets labels[0]."""
        if match_quality_matrix.dim() != 2:
            raise ValueError(f"expected a (G, N) matrix, got shape {tuple(match_quality_matrix.shape)}")
        n = match_quality_matrix.shape[1]
        if match_quality_matrix.shape[0] == 0:
            return (match_quality_matrix.new_zeros((n,), dtype=torch.int64),
                    match_quality_matrix.new_full((n,), self.labels[0], dtype=torch.int8))
        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_full(matches.shape, 1, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            match_labels[(matched_vals >= low) & (matched_vals < high)] = label
        if self.allow_low_quality_matches:
            self._set_low_quality_matches(match_labels, match_quality_matrix)
        return matches, match_labels

    @staticmethod
    def _set_low_quality_matches(match_labels: torch.Tensor, match_quality_matrix: torch.Tensor) -> None:
        # every prediction tied for a gt's best IoU becomes positive; its `matches` entry stays
        # the gt it overlaps most (detectron2 behaviour), which is that gt unless two gts tie
        best_per_gt, _ = match_quality_matrix.max(dim=1)
        # a gt with IoU 0 everywhere (e.g. outside every anchor) must not make all predictions positive
        best_per_gt = best_per_gt.clamp(min=1e-12)
        _, pred_idx = torch.nonzero(match_quality_matrix == best_per_gt[:, None], as_tuple=True)
        match_labels[pred_idx] = 1
