"""Is one model really better than another on a split? A paired bootstrap over the split's
questions: both models answered the same questions, so the questions are resampled and the
difference of the two mean scores is read off each resample (Efron & Tibshirani, ch. 16;
the usual test for comparing two systems on one test set)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Mapping

import numpy as np

from pipeline.evaluation import gqa, nlvr2, vqa
from pipeline.evaluation.split_files import load_json, load_json_lines, locate


@dataclass(frozen=True)
class Difference:
    """Mean score of A minus mean score of B, in percentage points, with its interval."""
    points: float
    low: float
    high: float
    confidence: float
    questions: int

    @property
    def clear(self) -> bool:
        """The whole interval lies above zero."""
        return self.low > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def question_scores(task: str, answers: Mapping[Hashable, str], data: str | os.PathLike,
                    split: str) -> dict[Hashable, float]:
    """Per-question scores in [0, 1] whose mean is the task's headline metric on `split`
    (VQA overall, GQA accuracy, NLVR2 accuracy); unanswered questions score 0."""
    files = locate(data, task, split)
    if task == "vqa":
        return vqa.question_scores(load_json(files.gold), answers)
    if task == "gqa":
        return gqa.question_scores(load_json(files.gold), answers)
    return nlvr2.question_scores(load_json_lines(files.gold), answers)


def paired_bootstrap(a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> Difference:
    if a.keys() != b.keys():
        raise ValueError(f"the two score sets cover different questions ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("no questions to compare")
    diff = np.array([a[k] - b[k] for k in a], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):         # bounded memory for large splits
        rows = min(1000, resamples - start)
        means[start:start + rows] = diff[rng.integers(0, diff.size, (rows, diff.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Difference(round(100 * float(diff.mean()), 2), round(100 * float(low), 2), round(100 * float(high), 2),
                      confidence, int(diff.size))
