"""The synthetic world: what a scene is, how one is sampled, and its spatial relations.

A scene is a plain background with a few non-overlapping shapes. Each object has a class
(its shape: the role of Visual Genome's 1600 objects) and three attributes (colour, size,
pattern: the role of the 400 attributes). Boxes are exact (the tight box of the drawn
shape). Relations are only stated when they are unambiguous: A is left of B only when A's
box ends before B's begins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# name -> synonyms written to the vocabulary file after the name (VG style "gray,grey")
SHAPES = {"circle": [], "square": [], "triangle": [], "star": [], "diamond": [], "hexagon": [],
          "pentagon": [], "cross": ["plus"], "ring": ["donut"], "crescent": ["moon"]}
COLORS = {"red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (50, 170, 60),
          "blue": (40, 80, 220), "purple": (140, 60, 190), "pink": (245, 130, 190), "brown": (130, 80, 40),
          "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
COLOR_SYNONYMS = {"gray": ["grey"]}
GRAY_COLORS = ("white", "black", "gray")     # the only colours of grayscale images
SIZES = {"small": (0.13, 0.16), "medium": (0.21, 0.25), "large": (0.31, 0.36)}   # side / min(W, H)
SIZE_SYNONYMS = {"large": ["big"], "small": ["little"]}
PATTERNS = ("solid", "striped", "dotted")
BACKGROUNDS = {"beige": (215, 205, 180), "slate": (60, 75, 95), "teal": (150, 195, 190), "lavender": (185, 175, 210)}
GRAY_BACKGROUNDS = {"light gray": (188, 188, 188), "dark gray": (74, 74, 74)}


@dataclass(frozen=True)
class WorldConfig:
    shapes: tuple[str, ...] = tuple(SHAPES)
    colors: tuple[str, ...] = tuple(COLORS)
    sizes: tuple[str, ...] = tuple(SIZES)
    patterns: tuple[str, ...] = PATTERNS
    min_objects: int = 2
    max_objects: int = 6
    min_side: int = 160
    max_side: int = 480

    def __post_init__(self) -> None:
        for name, known, given in (("shape", SHAPES, self.shapes), ("colour", COLORS, self.colors),
                                   ("size", SIZES, self.sizes), ("pattern", PATTERNS, self.patterns)):
            unknown = [g for g in given if g not in known]
            if unknown or not given:
                raise ValueError(f"unknown {name}s {unknown}; known: {', '.join(known)}")
        if len(self.shapes) < 2 or len(self.colors) < 3:
            raise ValueError("need at least 2 shapes and 3 colours")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")

    @property
    def attributes(self) -> tuple[str, ...]:
        return self.colors + self.sizes + self.patterns

    def gray_colors(self) -> tuple[str, ...]:
        return tuple(c for c in self.colors if c in GRAY_COLORS)


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    pattern: str
    box: tuple[int, int, int, int]      # x1, y1, x2, y2 (exclusive): the square the shape is drawn in
    rotation: float = 0.0

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.color, self.size, self.pattern)

    def describe(self, with_size: bool = False, with_pattern: bool = False) -> str:
        words = ([self.size] if with_size else []) + [self.color] + ([self.pattern] if with_pattern else [])
        return " ".join(words + [self.shape])


@dataclass
class Scene:
    width: int
    height: int
    background: str
    grayscale: bool
    objects: list[Obj] = field(default_factory=list)
    seed: int = 0                       # drives rendering noise only
    tight_boxes: list[tuple[int, int, int, int]] | None = None   # filled by rendering

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return sum(1 for o in self.objects if (shape is None or o.shape == shape)
                   and (color is None or o.color == color))

    def unique(self, shape: str | None = None, color: str | None = None) -> Obj | None:
        found = [o for o in self.objects if (shape is None or o.shape == shape) and (color is None or o.color == color)]
        return found[0] if len(found) == 1 else None


def left_of(a: Obj, b: Obj) -> bool:
    return a.box[2] <= b.box[0]


def above(a: Obj, b: Obj) -> bool:
    return a.box[3] <= b.box[1]


def relation(a: Obj, b: Obj) -> list[str]:
    """The unambiguous GQA-style relations of a to b."""
    rels = []
    if left_of(a, b):
        rels.append("to the left of")
    if left_of(b, a):
        rels.append("to the right of")
    if above(a, b):
        rels.append("above")
    if above(b, a):
        rels.append("below")
    return rels


def sample_scene(rng: np.random.Generator, cfg: WorldConfig, grayscale: bool = False,
                 focus: dict | None = None) -> Scene:
    """One scene. `focus` ({"shape" or "shapes", "color", "p"}) makes those values likelier, so that a
    statement about them can come out true or false (NLVR2) and counts above 1 occur."""
    width = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    height = int(rng.integers(cfg.min_side, cfg.max_side + 1))
    if grayscale and not cfg.gray_colors():
        grayscale = False   # without white/black/gray there is nothing true to draw in gray
    palette = cfg.gray_colors() if grayscale else cfg.colors
    backgrounds = GRAY_BACKGROUNDS if grayscale else BACKGROUNDS
    background = list(backgrounds)[int(rng.integers(len(backgrounds)))]
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    # a repeated shape or colour in half the scenes, so counts of 2-4 are common
    repeat_shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))] if rng.random() < 0.35 else None
    repeat_color = palette[int(rng.integers(len(palette)))] if rng.random() < 0.25 else None
    scene = Scene(width, height, background, grayscale, seed=int(rng.integers(2**31)))
    side_ref = min(width, height)
    for _ in range(n):
        focus_shapes = (focus or {}).get("shapes") or ([focus["shape"]] if focus and focus.get("shape") else [])
        if focus_shapes and rng.random() < focus.get("p", 0.3):
            shape = focus_shapes[int(rng.integers(len(focus_shapes)))]
        elif repeat_shape and rng.random() < 0.5:
            shape = repeat_shape
        else:
            shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
        if focus and focus.get("color") in palette and rng.random() < focus.get("p", 0.3):
            color = focus["color"]
        elif repeat_color and rng.random() < 0.5:
            color = repeat_color
        else:
            color = palette[int(rng.integers(len(palette)))]
        size = cfg.sizes[int(rng.integers(len(cfg.sizes)))]
        pattern = cfg.patterns[int(rng.integers(len(cfg.patterns)))]
        lo, hi = SIZES[size]
        side = max(12, int(side_ref * rng.uniform(lo, hi)))
        box = _place(rng, scene, side)
        if box is None:
            continue
        rotation = float(rng.uniform(-20, 20)) if shape in ("square", "triangle", "star", "pentagon",
                                                              "hexagon", "cross", "diamond") else 0.0
        scene.objects.append(Obj(shape, color, size, pattern, box, rotation))
    if not scene.objects:  # a tiny image and big draws: one small object always fits
        side = max(12, int(side_ref * 0.15))
        scene.objects.append(Obj(cfg.shapes[0], palette[0], cfg.sizes[0], cfg.patterns[0],
                                 (4, 4, 4 + side, 4 + side)))
    return scene


def _place(rng: np.random.Generator, scene: Scene, side: int, tries: int = 40):
    margin = 4
    if side + 2 * margin >= min(scene.width, scene.height):
        return None
    for _ in range(tries):
        x = int(rng.integers(margin, scene.width - side - margin))
        y = int(rng.integers(margin, scene.height - side - margin))
        box = (x, y, x + side, y + side)
        if all(box[2] + margin <= o.box[0] or o.box[2] + margin <= box[0] or
               box[3] + margin <= o.box[1] or o.box[3] + margin <= box[1] for o in scene.objects):
            return box
    return None
