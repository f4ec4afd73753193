"""Answer balancing: among the questions an image allows, ask the one whose answer is rarest so far.

Done per template (and kept across the whole split), so every template's answers end up
close to uniform and a guesser that only reads the question is near chance.
"""

from __future__ import annotations

import collections
from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")


class AnswerBalancer:
    def __init__(self) -> None:
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def pick(self, rng: np.random.Generator, template: str, candidates: Sequence[tuple[str, T]]) -> tuple[str, T] | None:
        """`candidates` are (answer, payload); returns the one with the least-used answer
        (ties broken at random) and counts it."""
        if not candidates:
            return None
        seen = self.counts[template]
        low = min(seen[a] for a, _ in candidates)
        best = [c for c in candidates if seen[c[0]] == low]
        choice = best[int(rng.integers(len(best)))]
        seen[choice[0]] += 1
        return choice
