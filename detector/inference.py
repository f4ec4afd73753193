"""Object detections for box evaluation (detectron2's `fast_rcnn_inference_single_image`).

Not the feature-extraction rule (that is selection.py, which keeps proposals): this is the
standard detector output that box mAP is defined on. For each proposal, the softmax over
C+1 classes and the class-specific regressed box (clipped to the image); every (proposal,
class) pair scoring above `score_thresh` is a candidate; per-class NMS at `nms_thresh`;
the best `detections_per_image` remain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detector.boxes import Box2BoxTransform, batched_nms, clip_boxes


@dataclass
class Detections:
    """One image's detections, sorted by decreasing score; boxes in the input's pixels."""
    boxes: torch.Tensor      # (K, 4) float32 x1, y1, x2, y2
    scores: torch.Tensor     # (K,) float32
    classes: torch.Tensor    # (K,) int64 in [0, C)

    def scaled(self, factor: float, height: float, width: float) -> "Detections":
        """Boxes divided by `factor` (resized -> original pixels), clipped to (height, width)."""
        return Detections(clip_boxes(self.boxes / factor, height, width), self.scores, self.classes)


def fast_rcnn_inference(class_logits: torch.Tensor, box_deltas: torch.Tensor, proposals: torch.Tensor,
                        image_size: tuple[int, int], box2box_transform: Box2BoxTransform, *,
                        score_thresh: float = 0.05, nms_thresh: float = 0.5,
                        detections_per_image: int = 100) -> Detections:
    """class_logits (R, C+1), box_deltas (R, 4C), proposals (R, 4), image_size (h, w)."""
    R, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    scores = F.softmax(class_logits.float(), dim=1)[:, :-1]
    boxes = box2box_transform.apply_deltas(box_deltas.float(), proposals.float())
    boxes = clip_boxes(boxes.view(R, num_classes, 4), *image_size)
    candidate = scores > score_thresh
    pairs = torch.nonzero(candidate)                   # (P, 2): proposal, class
    boxes, scores = boxes[candidate], scores[candidate]
    keep = batched_nms(boxes, scores, pairs[:, 1], nms_thresh)[:detections_per_image]
    return Detections(boxes[keep], scores[keep], pairs[keep, 1])
