"""A batch of images from a `FeatureStore` as the arrays LXMERT takes.

Boxes are divided by the image width/height (x1/w, y1/h, x2/w, y2/h), as every LXMERT
dataset class does (docs/reference/lxmert.md §1.7); features are fed raw, as float32. Stores made
with adaptive box counts (10-100) hold a different number of boxes per image: the batch is
padded to its largest count (or to `num_boxes`) and `mask` marks the real boxes. Reference
stores have 36 boxes everywhere and then nothing is padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model.modeling_lxmert import IGNORE_INDEX


@dataclass
class VisualBatch:
    features: np.ndarray       # (B, N, D) float32
    boxes: np.ndarray          # (B, N, 4) float32 in [0, 1]
    mask: np.ndarray           # (B, N) float32, 1 on real boxes
    objects_id: np.ndarray     # (B, N) int64, IGNORE_INDEX on padding
    objects_conf: np.ndarray   # (B, N) float32, 0 on padding
    attrs_id: np.ndarray       # (B, N) int64, IGNORE_INDEX on padding
    attrs_conf: np.ndarray     # (B, N) float32, 0 on padding

    @property
    def padded(self) -> bool:
        return not bool(self.mask.all())

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """`visual_feats`, `visual_pos`, `visual_attention_mask` (None when nothing is padded:
        the reference never passes a visual mask, and SDPA is faster without one)."""
        return {"visual_feats": torch.from_numpy(self.features), "visual_pos": torch.from_numpy(self.boxes),
                "visual_attention_mask": torch.from_numpy(self.mask) if self.padded else None}


def read_visual(store, image_ids: Sequence[str], num_boxes: int | None = None) -> VisualBatch:
    """Read `image_ids` from `store` (a `FeatureStore`) into one padded batch."""
    images = store.get_many(list(image_ids))
    n = num_boxes if num_boxes is not None else max((im.num_boxes for im in images), default=0)
    b, d = len(images), store.metadata.feature_dim
    out = VisualBatch(
        features=np.zeros((b, n, d), np.float32), boxes=np.zeros((b, n, 4), np.float32),
        mask=np.zeros((b, n), np.float32),
        objects_id=np.full((b, n), IGNORE_INDEX, np.int64), objects_conf=np.zeros((b, n), np.float32),
        attrs_id=np.full((b, n), IGNORE_INDEX, np.int64), attrs_conf=np.zeros((b, n), np.float32))
    for i, im in enumerate(images):
        k = min(im.num_boxes, n)
        out.features[i, :k] = im.features[:k]
        # clipped: detectors may put a box edge a fraction of a pixel outside the image
        out.boxes[i, :k] = np.clip(im.normalized_boxes()[:k], 0.0, 1.0)
        out.mask[i, :k] = 1.0
        out.objects_id[i, :k] = im.objects_id[:k]
        out.objects_conf[i, :k] = im.objects_conf[:k]
        out.attrs_id[i, :k] = im.attrs_id[:k]
        out.attrs_conf[i, :k] = im.attrs_conf[:k]
    return out
