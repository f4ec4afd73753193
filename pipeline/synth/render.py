"""Drawing a scene to an image file; runs in worker processes (a scene is plain data)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from pipeline.atomic import atomic_path
from pipeline.synth.world import BACKGROUNDS, COLORS, GRAY_BACKGROUNDS, Obj, Scene

SUPERSAMPLE = 2   # shapes are drawn at 2x and reduced, for smooth edges


def _polygon(n: int, cx: float, cy: float, r: float, rotation: float, start: float = -90.0) -> list[tuple]:
    return [(cx + r * math.cos(math.radians(start + rotation + 360.0 * k / n)),
             cy + r * math.sin(math.radians(start + rotation + 360.0 * k / n))) for k in range(n)]


def _star(cx: float, cy: float, r: float, rotation: float) -> list[tuple]:
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * 0.45
        a = math.radians(-90 + rotation + 36 * k)
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _cross(cx: float, cy: float, r: float, rotation: float) -> list[tuple]:
    t = r * 0.36
    pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def shape_mask(obj: Obj) -> Image.Image:
    """The object's coverage (mode L, the size of its box): 255 inside the shape."""
    side = obj.box[2] - obj.box[0]
    big = side * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    c = big / 2.0
    r = big / 2.0 - 1
    if obj.shape == "circle":
        draw.ellipse((1, 1, big - 2, big - 2), fill=255)
    elif obj.shape == "ring":
        draw.ellipse((1, 1, big - 2, big - 2), fill=255)
        inner = big * 0.24
        draw.ellipse((inner, inner, big - 1 - inner, big - 1 - inner), fill=0)
    elif obj.shape == "crescent":
        draw.ellipse((1, 1, big - 2, big - 2), fill=255)
        off = big * 0.38
        draw.ellipse((off, -big * 0.05, big * 1.3, big * 0.95), fill=0)
    elif obj.shape == "square":
        draw.polygon(_polygon(4, c, c, r * 1.0, obj.rotation, start=-45.0), fill=255)
    elif obj.shape == "diamond":
        draw.polygon([(c, 1), (big - 2 - big * 0.18, c), (c, big - 2), (1 + big * 0.18, c)], fill=255)
    elif obj.shape == "triangle":
        draw.polygon(_polygon(3, c, c * 1.12, r * 0.98, obj.rotation), fill=255)
    elif obj.shape == "pentagon":
        draw.polygon(_polygon(5, c, c * 1.05, r, obj.rotation), fill=255)
    elif obj.shape == "hexagon":
        draw.polygon(_polygon(6, c, c, r, obj.rotation), fill=255)
    elif obj.shape == "star":
        draw.polygon(_star(c, c * 1.05, r, obj.rotation), fill=255)
    elif obj.shape == "cross":
        draw.polygon(_cross(c, c, r * 0.98, obj.rotation), fill=255)
    else:
        raise ValueError(f"no drawing for shape {obj.shape!r}")
    return mask.resize((side, side), Image.BILINEAR)


def _pattern(obj: Obj, side: int) -> np.ndarray | None:
    """Where a patterned object lets the background through (True = gap)."""
    if obj.pattern == "solid":
        return None
    yy, xx = np.mgrid[0:side, 0:side]
    if obj.pattern == "striped":
        period = max(4, side // 6)
        return ((xx + yy) % period) < period * 0.38
    period = max(5, side // 5)
    cx = (xx % period) - period / 2.0
    cy = (yy % period) - period / 2.0
    return cx * cx + cy * cy < (period * 0.27) ** 2


def render_scene(scene: Scene) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """The image and each object's tight box (x1, y1, x2, y2 exclusive) in pixels."""
    rng = np.random.default_rng(scene.seed)
    base = np.array((GRAY_BACKGROUNDS if scene.grayscale else BACKGROUNDS)[scene.background], np.float32)
    # a soft gradient, so the background is not one flat colour
    gx = np.linspace(-1.0, 1.0, scene.width, dtype=np.float32)[None, :, None]
    gy = np.linspace(-1.0, 1.0, scene.height, dtype=np.float32)[:, None, None]
    tilt = rng.uniform(-12, 12, size=2).astype(np.float32)
    pixels = base[None, None, :] + gx * tilt[0] + gy * tilt[1]
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    boxes = []
    for obj in scene.objects:
        side = obj.box[2] - obj.box[0]
        mask = shape_mask(obj)
        tight = mask.point(lambda v: 255 if v >= 128 else 0).getbbox()
        if tight is None:
            tight = (0, 0, side, side)
        boxes.append((obj.box[0] + tight[0], obj.box[1] + tight[1], obj.box[0] + tight[2], obj.box[1] + tight[3]))
        gaps = _pattern(obj, side)
        if gaps is not None:
            m = np.asarray(mask).copy()
            m[gaps] = 0
            mask = Image.fromarray(m, "L")
        jitter = rng.integers(-10, 11, size=3)
        color = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLORS[obj.color], jitter))
        canvas.paste(color, obj.box, mask)
    if scene.grayscale:
        canvas = canvas.convert("L")
    return canvas, boxes


def render_to_file(job: tuple[Scene, str]) -> list[tuple[int, int, int, int]]:
    scene, path = job
    image, boxes = render_scene(scene)
    with atomic_path(path) as tmp:
        if path.endswith(".png"):
            image.save(tmp, format="PNG", compress_level=1)
        else:
            image.save(tmp, format="JPEG", quality=90)
    return boxes
