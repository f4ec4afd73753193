"""Box arithmetic in detectron2 conventions (no "+1" widths), NMS in one call, and greedy NMS
in fixed shapes for many problems at once (`greedy_nms_fixed`, the GPU's box selection).

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


def clip_boxes(boxes: torch.Tensor, height: float | torch.Tensor, width: float | torch.Tensor) -> torch.Tensor:
    """Clip x to [0, width] and y to [0, height] (detectron2; Caffe clips to width - 1).
    `height`/`width` may be tensors broadcasting against boxes[..., :2] (one size per image)."""
    if isinstance(width, torch.Tensor) or isinstance(height, torch.Tensor):
        x = torch.minimum(boxes[..., 0::2].clamp(min=0), torch.as_tensor(width, dtype=boxes.dtype))
        y = torch.minimum(boxes[..., 1::2].clamp(min=0), torch.as_tensor(height, dtype=boxes.dtype))
    else:
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


def nms_iou(boxes: torch.Tensor) -> torch.Tensor:
    """(..., R, 4) -> (..., R, R) IoU, computed as torchvision's NMS kernels do (same operations
    in the same order, in the boxes' dtype), so `iou > t` decides suppression exactly as
    `torchvision.ops.nms` would on the same boxes."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[..., :, None], x2[..., None, :])
         - torch.maximum(x1[..., :, None], x1[..., None, :])).clamp(min=0)
    h = (torch.minimum(y2[..., :, None], y2[..., None, :])
         - torch.maximum(y1[..., :, None], y1[..., None, :])).clamp(min=0)
    inter = w * h
    return inter / (area[..., :, None] + area[..., None, :] - inter)


def greedy_nms_fixed(suppresses: torch.Tensor, order: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Greedy NMS for many problems at once, in fixed shapes: no data-dependent size, so no
    host synchronisation on a GPU (torchvision's `nms` returns a tensor whose length the host
    must read).

    Problem (n, g) ranks the boxes of image n by `order[n, g]` (box indices, best first) and
    keeps a box unless a kept box ranked before it suppresses it.
    suppresses: (N, S, R, R) bool, [n, s, i, j] = box i suppresses box j; S is 1 (every
    problem of an image shares it, e.g. per-class NMS on shared boxes) or G (one per problem).
    order: (N, G, R) int64. valid: (N, G, R) bool, by rank: False ranks (padding, excluded
    boxes) are never kept and suppress nothing. -> kept: (N, G, R) bool, by rank.

    R sequential steps of O(N G R) work each: the loop is over ranks, never over boxes of
    a data-dependent count.
    """
    N, G, R = order.shape
    device = order.device
    suppressed = torch.zeros((N, G, R), dtype=torch.bool, device=device)   # by box index
    kept = torch.zeros((N, G, R), dtype=torch.bool, device=device)         # by rank
    image = torch.arange(N, device=device)[:, None]
    problem = (torch.arange(G, device=device) if suppresses.shape[1] == G
               else torch.zeros(G, dtype=torch.int64, device=device))[None, :]
    for t in range(R):
        box = order[:, :, t]                                                 # (N, G)
        alive = valid[:, :, t] & ~suppressed.gather(2, box[:, :, None])[:, :, 0]
        kept[:, :, t] = alive
        suppressed |= suppresses[image, problem, box] & alive[:, :, None]
    return kept
