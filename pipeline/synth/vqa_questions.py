"""VQA-style questions about one scene, with their answer, answer type and question type."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.synth.balance import AnswerBalancer
from pipeline.synth.language import article, plural
from pipeline.synth.world import Scene, WorldConfig, above, left_of


@dataclass(frozen=True)
class Question:
    template: str
    question: str
    answer: str
    answer_type: str      # yes/no | number | other
    question_type: str    # the VQA question-type prefix
    wrong: tuple[str, ...] = ()   # plausible wrong answers (for annotator disagreement)


def _color(scene: Scene, cfg: WorldConfig):
    out = []
    for shape in cfg.shapes:
        o = scene.unique(shape=shape)
        if o is not None:
            wrong = tuple(c for c in cfg.colors if c != o.color)
            out.append((o.color, Question("color", f"What color is the {shape}?", o.color, "other",
                                          "what color is the", wrong)))
    return out


def _shape(scene: Scene, cfg: WorldConfig):
    out = []
    for color in cfg.colors:
        o = scene.unique(color=color)
        if o is not None:
            wrong = tuple(s for s in cfg.shapes if s != o.shape)
            out.append((o.shape, Question("shape", f"What shape is the {color} object?", o.shape, "other",
                                          "what", wrong)))
    return out


def _count(scene: Scene, cfg: WorldConfig):
    out = []
    for shape in cfg.shapes:
        n = scene.count(shape=shape)
        wrong = tuple(str(k) for k in (n - 1, n + 1) if k >= 0)
        out.append((str(n), Question("count_shape", f"How many {plural(shape)} are there?", str(n), "number",
                                     "how many", wrong)))
    for color in cfg.colors:
        n = scene.count(color=color)
        wrong = tuple(str(k) for k in (n - 1, n + 1) if k >= 0)
        out.append((str(n), Question("count_color", f"How many {color} objects are there?", str(n), "number",
                                     "how many", wrong)))
    return out


def _exist(scene: Scene, cfg: WorldConfig, rng: np.random.Generator):
    present = {(o.color, o.shape) for o in scene.objects}
    yes = [(c, s) for c, s in sorted(present)]
    # absent pairs that share a colour or a shape with the scene, so "no" needs a close look
    near = sorted({(c, s) for c in cfg.colors for s in cfg.shapes if (c, s) not in present
                   and (scene.count(color=c) or scene.count(shape=s))})
    out = [("yes", (c, s)) for c, s in yes]
    if near:
        picks = rng.choice(len(near), size=min(len(near), 4), replace=False)
        out += [("no", near[i]) for i in picks]
    return [(a, Question("exist", f"Is there {article(c)} {c} {s}?", a, "yes/no", "is there a",
                         ("no",) if a == "yes" else ("yes",))) for a, (c, s) in out]


def _relation(scene: Scene, cfg: WorldConfig):
    out = []
    uniques = [o for o in scene.objects if scene.count(shape=o.shape) == 1]
    for a in uniques:
        for b in uniques:
            if a is b:
                continue
            for word, holds, opposite in (("to the left of", left_of(a, b), left_of(b, a)),
                                          ("above", above(a, b), above(b, a))):
                if holds or opposite:   # only clear cases are asked
                    ans = "yes" if holds else "no"
                    out.append((ans, Question(f"relation_{word.split()[-2] if ' ' in word else word}",
                                              f"Is the {a.shape} {word} the {b.shape}?", ans, "yes/no", "is the",
                                              ("no",) if ans == "yes" else ("yes",))))
    return out


def _size(scene: Scene, cfg: WorldConfig):
    out = []
    for shape in cfg.shapes:
        o = scene.unique(shape=shape)
        if o is not None:
            out.append((o.size, Question("size", f"What size is the {shape}?", o.size, "other", "what size is the",
                                         tuple(s for s in cfg.sizes if s != o.size))))
    return out


def _pattern(scene: Scene, cfg: WorldConfig):
    out = []
    for shape in cfg.shapes:
        o = scene.unique(shape=shape)
        if o is not None:
            for pattern in cfg.patterns:
                if pattern == "solid":
                    continue
                ans = "yes" if o.pattern == pattern else "no"
                out.append((ans, Question("pattern", f"Is the {shape} {pattern}?", ans, "yes/no", "is the",
                                          ("no",) if ans == "yes" else ("yes",))))
    return out


TEMPLATES = ("color", "shape", "count", "exist", "relation", "size", "pattern")


def ask(rng: np.random.Generator, scene: Scene, cfg: WorldConfig, balancer: AnswerBalancer,
        n: int) -> list[Question]:
    """Up to `n` questions about `scene`, each from a different template, answers balanced."""
    builders = {"color": lambda: _color(scene, cfg), "shape": lambda: _shape(scene, cfg),
                "count": lambda: _count(scene, cfg), "exist": lambda: _exist(scene, cfg, rng),
                "relation": lambda: _relation(scene, cfg), "size": lambda: _size(scene, cfg),
                "pattern": lambda: _pattern(scene, cfg)}
    order = [TEMPLATES[i] for i in rng.permutation(len(TEMPLATES))]
    out: list[Question] = []
    asked: set[str] = set()
    for name in order:
        if len(out) >= n:
            break
        candidates = [(a, q) for a, q in builders[name]() if q.question not in asked]
        if not candidates:
            continue
        # sub-templates (count_shape / count_color, relation_left / relation_above) balance separately
        by_template: dict[str, list] = {}
        for a, q in candidates:
            by_template.setdefault(q.template, []).append((a, q))
        keys = sorted(by_template)
        key = keys[int(rng.integers(len(keys)))]
        picked = balancer.pick(rng, key, by_template[key])
        if picked is not None:
            out.append(picked[1])
            asked.add(picked[1].question)
    return out
