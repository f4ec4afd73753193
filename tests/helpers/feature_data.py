"""Feature-store fixtures shared by tests: realistic synthetic detector outputs."""

from __future__ import annotations

import numpy as np

from pipeline.features import ImageFeatures, StoreMetadata


def make_metadata(dim: int = 64, dtype: str = "float16", num_objects: int = 10, num_attributes: int = 20,
                  detector: str = "tiny") -> StoreMetadata:
    return StoreMetadata(detector=detector, detector_config={"preset": detector}, weights_sha256="random",
                         box_rule={"selection": "caffe", "min_boxes": 10, "max_boxes": 36},
                         feature_dim=dim, num_objects=num_objects, num_attributes=num_attributes,
                         feature_dtype=dtype)


def make_image(i: int, num_boxes: int = 36, dim: int = 64, seed: int = 0, num_objects: int = 10,
               num_attributes: int = 20) -> ImageFeatures:
    """Post-ReLU-like features: non-negative, about a third zeros, max around 35."""
    rng = np.random.default_rng(seed * 100_003 + i)
    w, h = int(rng.integers(160, 640)), int(rng.integers(160, 480))
    xy = rng.random((num_boxes, 2)) * [w - 8, h - 8]
    wh = 4 + rng.random((num_boxes, 2)) * [w / 2, h / 2]
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], axis=1).astype(np.float32)
    feats = rng.lognormal(-1.0, 0.7, (num_boxes, dim)) * rng.exponential(1.0, (num_boxes, dim))
    feats[rng.random((num_boxes, dim)) < 0.33] = 0.0
    return ImageFeatures(
        image_id=f"img{i:06d}", width=w, height=h, boxes=boxes, features=np.minimum(feats, 35.0).astype(np.float32),
        objects_id=rng.integers(0, num_objects, num_boxes).astype(np.int32),
        objects_conf=rng.random(num_boxes).astype(np.float32),
        attrs_id=rng.integers(0, num_attributes, num_boxes).astype(np.int32),
        attrs_conf=rng.random(num_boxes).astype(np.float32),
    )


def make_store(directory, images, meta=None, per_shard: int = 16):
    """Write `images` as a finalized store (shards of `per_shard`) and open it."""
    from pathlib import Path

    from pipeline.features import FeatureStore, finalize_store, shard_name, write_shard

    directory = Path(directory)
    meta = meta or make_metadata(dim=images[0].features.shape[1])
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(0, len(images), per_shard):
        write_shard(directory / shard_name(k // per_shard), images[k:k + per_shard], meta)
    finalize_store(directory, meta)
    return FeatureStore(directory)
