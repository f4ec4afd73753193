"""NLVR2-style statements about a pair of scenes, each a sentence and a predicate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.synth.language import NUMBER_WORDS, article, plural
from pipeline.synth.world import Scene, WorldConfig, left_of


@dataclass(frozen=True)
class Statement:
    template: str
    sentence: str
    holds: Callable[[Scene, Scene], bool]
    focus: dict          # what the scene sampler should make likelier, so both labels occur


def _count_word(n: int) -> str:
    return NUMBER_WORDS[n]


def sample_statement(rng: np.random.Generator, cfg: WorldConfig) -> Statement:
    shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
    color = cfg.colors[int(rng.integers(len(cfg.colors)))]
    n = int(rng.integers(1, 4))
    kind = int(rng.integers(7))
    if kind == 0:
        return Statement("exactly_left", f"The left image contains exactly {_count_word(n)} "
                         f"{shape if n == 1 else plural(shape)}.",
                         lambda l, r: l.count(shape=shape) == n, {"shape": shape, "p": 0.35})
    if kind == 1:
        return Statement("exist_right", f"The right image contains {article(color)} {color} {shape}.",
                         lambda l, r: r.count(shape=shape, color=color) > 0,
                         {"shape": shape, "color": color, "p": 0.3})
    if kind == 2:
        return Statement("both", f"Both images contain at least one {shape}.",
                         lambda l, r: l.count(shape=shape) > 0 and r.count(shape=shape) > 0,
                         {"shape": shape, "p": 0.4})
    if kind == 3:
        return Statement("total", f"There are {_count_word(n + 1)} {color} objects in total.",
                         lambda l, r: l.count(color=color) + r.count(color=color) == n + 1,
                         {"color": color, "p": 0.3})
    if kind == 4:
        return Statement("more", f"The left image has more {plural(shape)} than the right image.",
                         lambda l, r: l.count(shape=shape) > r.count(shape=shape), {"shape": shape, "p": 0.35})
    if kind == 5:
        return Statement("one_image", f"Exactly one image contains {article(color)} {color} object.",
                         lambda l, r: (l.count(color=color) > 0) != (r.count(color=color) > 0),
                         {"color": color, "p": 0.25})
    other = cfg.shapes[(cfg.shapes.index(shape) + 1 + int(rng.integers(len(cfg.shapes) - 1))) % len(cfg.shapes)]

    def left_rel(l: Scene, r: Scene) -> bool:
        for s in (l, r):
            a, b = s.unique(shape=shape), s.unique(shape=other)
            if a is not None and b is not None and left_of(a, b):
                return True
        return False

    return Statement("relation", f"In one image, {article(shape)} {shape} is to the left of {article(other)} {other}.",
                     left_rel, {"shapes": [shape, other], "p": 0.5})
