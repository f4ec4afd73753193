"""Captions (COCO style, five per image) and region phrases (Visual Genome style)."""

from __future__ import annotations

import numpy as np

from pipeline.synth.language import NUMBER_WORDS, article, count_phrase
from pipeline.synth.world import Obj, Scene, above, left_of


def _np(o: Obj, rng: np.random.Generator, definite: bool = False) -> str:
    r = rng.random()
    words = o.describe(with_size=r < 0.4, with_pattern=0.3 < r < 0.6 and o.pattern != "solid")
    return f"the {words}" if definite else f"{article(words)} {words}"


def _relation_sentence(scene: Scene, rng: np.random.Generator) -> str | None:
    pairs = [(a, b, "to the left of") for a in scene.objects for b in scene.objects if a is not b and left_of(a, b)]
    pairs += [(a, b, "above") for a in scene.objects for b in scene.objects if a is not b and above(a, b)]
    if not pairs:
        return None
    a, b, word = pairs[int(rng.integers(len(pairs)))]
    return f"{_np(a, rng).capitalize()} {word} {_np(b, rng)}."


def captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    objs = scene.objects
    bg = scene.background
    out = []
    listing = ", ".join(_np(o, rng) for o in objs[:-1])
    listing = f"{listing} and {_np(objs[-1], rng)}" if len(objs) > 1 else _np(objs[0], rng)
    out.append(f"{listing.capitalize()} on a {bg} background.")
    out.append(f"{NUMBER_WORDS[len(objs)].capitalize() if len(objs) < len(NUMBER_WORDS) else len(objs)} "
               f"{'shape' if len(objs) == 1 else 'shapes'} on a plain {bg} surface.")
    rel = _relation_sentence(scene, rng)
    out.append(rel or f"A single {objs[0].describe()} in the middle of nowhere.")
    biggest = max(objs, key=lambda o: o.box[2] - o.box[0])
    out.append(f"The largest shape is {_np(biggest, rng)}.")
    shapes = sorted({o.shape for o in objs})
    parts = [count_phrase(scene.count(shape=s), s) for s in shapes]
    out.append(("There " + ("is " if parts[0].startswith("one ") else "are ") + ", ".join(parts) + ".")
               if len(parts) < 4 else f"Several shapes, among them {_np(objs[0], rng)}.")
    while len(out) < n:
        out.append(_relation_sentence(scene, rng) or out[0])
    order = rng.permutation(len(out))
    return [out[i] for i in order][:n]


def region_phrases(scene: Scene, boxes: list[tuple[int, int, int, int]], rng: np.random.Generator):
    """(phrase, x, y, w, h) for each object, plus a few two-object regions."""
    out = []
    for o, (x1, y1, x2, y2) in zip(scene.objects, boxes):
        words = o.describe(with_size=rng.random() < 0.5, with_pattern=o.pattern != "solid" and rng.random() < 0.5)
        out.append((f"{article(words)} {words}" if rng.random() < 0.5 else words, x1, y1, x2 - x1, y2 - y1))
    for (a, ba), (b, bb) in zip(zip(scene.objects, boxes), list(zip(scene.objects, boxes))[1:]):
        word = "left of" if left_of(a, b) else "right of" if left_of(b, a) else "above" if above(a, b) else \
            "below" if above(b, a) else None
        if word:
            x1, y1 = min(ba[0], bb[0]), min(ba[1], bb[1])
            x2, y2 = max(ba[2], bb[2]), max(ba[3], bb[3])
            out.append((f"{a.color} {a.shape} {word} {b.color} {b.shape}", x1, y1, x2 - x1, y2 - y1))
    return out
