"""Box arithmetic in detectron2 conventions (no "+1" widths), and NMS in one call.

Box2BoxTransform is detectron2's: w = x2 - x1, ctr = x1 + 0.5 w, dw/dh clamped at
log(1000/16) before exp. Caffe's bbox_transform_inv uses w = x2 - x1 + 1 and no clamp
(docs/reference/detector.md §1.0); the AIR/HF weights were converted for the detectron2 form, so that is what
runs here.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import nms

_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    def __init__(self, weights: tuple[float, float, float, float], scale_clamp: float = _SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Regression targets taking `src` boxes to `target` boxes (for training)."""
        src_w, src_h = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
        src_x, src_y = src[:, 0] + 0.5 * src_w, src[:, 1] + 0.5 * src_h
        tgt_w, tgt_h = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        tgt_x, tgt_y = target[:, 0] + 0.5 * tgt_w, target[:, 1] + 0.5 * tgt_h
        wx, wy, ww, wh = self.weights
        return torch.stack([wx * (tgt_x - src_x) / src_w, wy * (tgt_y - src_y) / src_h,
                            ww * torch.log(tgt_w / src_w), wh * torch.log(tgt_h / src_h)], dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """deltas (R, 4k), boxes (R, 4) -> (R, 4k) boxes; computed in float32."""
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        out = torch.stack([pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                           pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h], dim=2)
        return out.reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """Clip x to [0, width] and y to [0, height] (detectron2; Caffe clips to width - 1)."""
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """NMS within each group, as ONE `torchvision.ops.nms` call (the coordinate-offset trick).

    torchvision's own `batched_nms` falls back to a Python loop over groups above 4000 CPU
    boxes. Here each group is shifted to its own region; the shift is done in float64 so that
    offsets of millions of pixels (1600 classes x image size) keep sub-pixel IoU precision.
    Returns kept indices sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes64 = boxes.double()
    # dense group ids keep the offsets as small as possible
    _, dense = torch.unique(groups, return_inverse=True)
    span = boxes64.max() - min(boxes64.min(), 0) + 1
    shifted = boxes64 + (dense.to(boxes64) * span)[:, None]
    return nms(shifted, scores.double(), iou_threshold)
