"""Ground-truth region features for a synthetic world: a feature store with no detector.

Each image's regions are its true objects (their drawn boxes), plus a few background boxes
up to `min_boxes`, as a detector would propose. A region's feature holds its class and
attributes as scaled one-hot blocks plus non-negative noise, like post-ReLU pooled features;
`objects_id`/`attrs_id` are the true class and colour with high confidence (background
boxes: a random class with low confidence). The scenes are re-planned from the world's
seed and split sizes in `synth_summary.json`, so no image is decoded.

Use: fast, meaningful features for tests of the LXMERT stages, and the "perfect detector"
upper bound beside a trained detector's features (what the detector costs downstream).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.features import ImageFeatures, StoreMetadata, finalize_store, shard_name, write_shard
from pipeline.synth.generate import _streams, plan_images
from pipeline.synth.world import COLORS, WorldConfig

DETECTOR_NAME = "oracle"


def _world(root: Path) -> tuple[WorldConfig, dict, int]:
    path = root / "synth_summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        cfg = WorldConfig(shapes=tuple(summary["shapes"]),
                          colors=tuple(a for a in summary["attributes"] if a in COLORS))
        return cfg, summary["groups"], int(summary["seed"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"not a synthetic world's summary ({err})", path) from None


def oracle_images(root: str | os.PathLike, *, feature_dim: int = 64, min_boxes: int = 10, noise: float = 0.3,
                  seed: int = 0) -> tuple[list[ImageFeatures], StoreMetadata]:
    """Every image of the world at `root` as ground-truth regions, and the store metadata."""
    root = Path(root)
    cfg, counts, world_seed = _world(root)
    images, _ = plan_images(counts, cfg, _streams(world_seed, ["plan", "ids", "vg", "coco", "gqa"])["plan"])
    shapes, attributes = list(cfg.shapes), list(cfg.attributes)
    needed = len(shapes) + len(attributes)
    if feature_dim < needed:
        raise PipelineError(f"feature_dim {feature_dim} cannot hold {len(shapes)} classes + "
                            f"{len(attributes)} attributes")
    rng = np.random.default_rng(seed)
    out = []
    for im in images:
        scene = im.scene
        objs = scene.objects
        k = max(min_boxes, len(objs))
        feats = rng.exponential(noise, (k, feature_dim)).astype(np.float32)
        feats[rng.random((k, feature_dim)) < 0.3] = 0.0
        boxes = np.zeros((k, 4), np.float32)
        obj_id = rng.integers(0, len(shapes), k).astype(np.int32)
        obj_conf = rng.uniform(0.05, 0.2, k).astype(np.float32)
        attr_id = rng.integers(0, len(attributes), k).astype(np.int32)
        attr_conf = rng.uniform(0.05, 0.2, k).astype(np.float32)
        for j, o in enumerate(objs):
            boxes[j] = o.box
            c = shapes.index(o.shape)
            feats[j, c] += 5.0
            for a in o.attributes:
                feats[j, len(shapes) + attributes.index(a)] += 5.0
            obj_id[j], attr_id[j] = c, attributes.index(o.color)
            obj_conf[j], attr_conf[j] = rng.uniform(0.8, 1.0), rng.uniform(0.7, 1.0)
        for j in range(len(objs), k):   # background proposals: anywhere, any size
            x1, y1 = rng.uniform(0, scene.width * 0.8), rng.uniform(0, scene.height * 0.8)
            boxes[j] = (x1, y1, rng.uniform(x1 + 8, scene.width), rng.uniform(y1 + 8, scene.height))
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, scene.width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, scene.height)
        out.append(ImageFeatures(im.image_id, scene.width, scene.height, boxes, feats, obj_id, obj_conf,
                                 attr_id, attr_conf))
    meta = StoreMetadata(detector=DETECTOR_NAME, detector_config={"feature_dim": feature_dim, "min_boxes": min_boxes,
                                                                  "noise": noise, "seed": seed},
                         weights_sha256="none", box_rule={"method": "ground truth", "min_boxes": min_boxes},
                         feature_dim=feature_dim, num_objects=len(shapes), num_attributes=len(attributes),
                         feature_dtype="float32")
    return out, meta


def write_oracle_store(root: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 1000,
                       **options) -> Path:
    """Write the ground-truth store of the world at `root` to `out` (a complete feature store)."""
    images, meta = oracle_images(root, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    infos = [write_shard(out / shard_name(k // shard_size), images[k:k + shard_size], meta)
             for k in range(0, len(images), shard_size)]
    finalize_store(out, meta, infos)
    return out
