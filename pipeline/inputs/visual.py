"""A batch of images from a `FeatureStore` as the arrays LXMERT takes.

Boxes are divided by the image width/height (x1/w, y1/h, x2/w, y2/h), as every LXMERT
dataset class does (docs/reference/lxmert.md §1.7); features are fed raw. Stores made
with adaptive box counts (10-100) hold a different number of boxes per image: the batch is
padded to its largest count (or to `num_boxes`) and `mask` marks the real boxes. Reference
stores have 36 boxes everywhere and then nothing is padded.

Feature dtype: `read_visual(..., dtype=None)` keeps the store's own dtype (float16 for what
`extract` writes). That is what the training batches ship (pretraining and fine-tuning): the
CPU only gathers bytes, half as many cross to the device, and the model converts them there
to its compute dtype (`LxmertVisualFeatureEncoder`). float16 -> float32 is exact, so the
model computes on the same numbers as from a float32 batch. `dtype="float32"` (the default)
converts on the CPU, for callers that compute on the arrays themselves.

Inside a DataLoader worker the features are written straight into shared memory
(batch_memory.py), so that handing the batch to the training process does not copy its
largest array once more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from model.modeling_lxmert import IGNORE_INDEX
from pipeline.inputs.batch_memory import batch_tensor, torch_dtype


@dataclass
class VisualBatch:
    features: np.ndarray       # (B, N, D) float32, or the store's dtype (`read_visual(dtype=None)`)
    boxes: np.ndarray          # (B, N, 4) float32 in [0, 1]
    mask: np.ndarray           # (B, N) float32, 1 on real boxes
    objects_id: np.ndarray     # (B, N) int64, IGNORE_INDEX on padding
    objects_conf: np.ndarray   # (B, N) float32, 0 on padding
    attrs_id: np.ndarray       # (B, N) int64, IGNORE_INDEX on padding
    attrs_conf: np.ndarray     # (B, N) float32, 0 on padding
    # `features` as a tensor over the same memory (shared memory in a DataLoader worker): put
    # this one in a batch, not `torch.from_numpy(features)`, or the worker copies it again
    feature_tensor: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.feature_tensor is None:
            self.feature_tensor = torch.from_numpy(self.features)

    @property
    def padded(self) -> bool:
        return not bool(self.mask.all())

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """`visual_feats`, `visual_pos`, `visual_attention_mask` (None when nothing is padded:
        the reference never passes a visual mask, and SDPA is faster without one)."""
        return {"visual_feats": self.feature_tensor, "visual_pos": torch.from_numpy(self.boxes),
                "visual_attention_mask": torch.from_numpy(self.mask) if self.padded else None}


def read_visual(store, image_ids: Sequence[str], num_boxes: int | None = None, *,
                dtype: str | None = "float32") -> VisualBatch:
    """Read `image_ids` from `store` (a `FeatureStore`) into one padded batch.

    `dtype`: of the batch's features; None keeps the store's (no conversion on the CPU).
    Each per-box column of the whole batch is filled at once, not image by image.
    """
    images = store.get_many(list(image_ids))
    b, d = len(images), store.metadata.feature_dim
    counts = np.fromiter((im.num_boxes for im in images), np.int64, b)
    n = num_boxes if num_boxes is not None else int(counts.max(initial=0))
    kept = np.minimum(counts, n)
    real = np.arange(n) < kept[:, None]                      # (B, N): the batch's real boxes
    if dtype is None:
        # the arrays' own dtype (an in-memory store may hold float32 under a float16 manifest)
        dtype = np.result_type(*(im.features.dtype for im in images)) if b else store.metadata.feature_dtype
    feature_tensor = batch_tensor((b, n, d), torch_dtype(dtype))
    features = feature_tensor.numpy()
    if (kept == n).all():        # nothing padded (the reference's 36 boxes): one copy into place
        np.concatenate([im.features[:n] for im in images] or [features.reshape(0, d)],
                       out=features.reshape(b * n, d))
    else:
        for i, im in enumerate(images):
            features[i, :kept[i]] = im.features[:kept[i]]
            features[i, kept[i]:] = 0

    def per_box(column: str, fill, out_dtype, width: tuple[int, ...] = ()) -> np.ndarray:
        out = np.full((b, n) + width, fill, out_dtype)
        if b:
            out[real] = np.concatenate([getattr(im, column)[:n] for im in images])
        return out

    boxes = per_box("boxes", 0.0, np.float32, (4,))
    scale = np.array([[im.width, im.height, im.width, im.height] for im in images], np.float32).reshape(b, 1, 4)
    # clipped: detectors may put a box edge a fraction of a pixel outside the image
    np.clip(np.divide(boxes, scale, out=boxes, where=real[..., None]), 0.0, 1.0, out=boxes)
    return VisualBatch(
        features=features, boxes=boxes, mask=real.astype(np.float32),
        objects_id=per_box("objects_id", IGNORE_INDEX, np.int64), objects_conf=per_box("objects_conf", 0.0, np.float32),
        attrs_id=per_box("attrs_id", IGNORE_INDEX, np.int64), attrs_conf=per_box("attrs_conf", 0.0, np.float32),
        feature_tensor=feature_tensor)
