"""Which regions are saved per image: the bottom-up-attention box selection (docs/reference/detector.md §4).

`caffe` (default, what LXMERT's released features used, LXM `extract_*_image.py` =
CAFFE `generate_tsv.py`):
  1. per-class NMS (IoU 0.3) on the *proposal* boxes, one class at a time over all proposals;
  2. max_conf[i] = the highest class score among the classes (background excluded) for which
     proposal i survives, 0 if it survives none;
  3. keep = {i: max_conf[i] >= 0.2} in proposal order; if fewer than min_boxes, the top
     min_boxes by max_conf; if more than max_boxes, the top max_boxes by max_conf;
  4. saved: the proposal boxes, their features, argmax object (background excluded) and its
     softmax-over-all-classes probability, argmax attribute ("no attribute" excluded) and its
     softmax-over-all-attributes probability.
`max_class` (AIR `detectron2_mscoco_proposal_maxnms.py`, HF `modeling_frcnn.py`): the argmax
class per proposal, its class-specific regressed box, one class-agnostic NMS; thresholds
0.3, 0.4, ... until at least min_boxes survive, then the first max_boxes. Saves the regressed
boxes (features stay those of the proposals); no score threshold (as in AIR/HF).

Step 1 for all 1600 classes in one NMS call: every (proposal, class) pair is a box of its
class group. Pairs that cannot change the answer are dropped first, exactly: suppression in
greedy NMS only flows from higher to lower scores within a class, so NMS restricted to the
pairs with score >= t gives the true survival of those pairs, hence the true max_conf of
every proposal whose max_conf >= t, and only max_conf < t for the others. With t below the
score threshold and at least min_boxes proposals known to reach t, the selection is exactly
the full computation's; otherwise t is lowered (down to all pairs). `select_boxes_reference`
is the plain per-class loop the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from detector.boxes import batched_nms
from detector.config import SelectionConfig


@dataclass
class BoxSelection:
    """Indices of the kept proposals (in saved order) and the object class/score per kept box."""
    keep: torch.Tensor            # (K,) int64 indices into the image's proposals
    boxes: torch.Tensor           # (K, 4) saved boxes (proposals for caffe, regressed for max_class)
    max_conf: torch.Tensor        # (K,) the score the selection ranked by


def _caffe_order(max_conf: torch.Tensor, cfg: SelectionConfig) -> torch.Tensor:
    keep = torch.nonzero(max_conf >= cfg.score_thresh).flatten()
    if keep.numel() < cfg.min_boxes or keep.numel() > cfg.max_boxes:
        n = cfg.min_boxes if keep.numel() < cfg.min_boxes else cfg.max_boxes
        keep = torch.sort(max_conf, descending=True, stable=True).indices[:n]
    return keep


def max_conf_per_class_nms(boxes: torch.Tensor, class_probs: torch.Tensor, nms_thresh: float,
                           score_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """max_conf over the pairs with score >= score_floor, in one NMS call.

    -> (max_conf (R,), exact (R,) bool: max_conf is the full computation's value there).
    """
    R, C = class_probs.shape
    pair = torch.nonzero(class_probs >= score_floor)            # (P, 2): proposal, class
    max_conf = class_probs.new_zeros(R)
    if pair.numel():
        scores = class_probs[pair[:, 0], pair[:, 1]]
        kept = batched_nms(boxes[pair[:, 0]], scores, pair[:, 1], nms_thresh)
        max_conf.scatter_reduce_(0, pair[kept, 0], scores[kept], reduce="amax", include_self=True)
    exact = max_conf >= score_floor
    return max_conf, exact


def select_boxes_caffe(boxes: torch.Tensor, class_probs: torch.Tensor, cfg: SelectionConfig) -> BoxSelection:
    """boxes (R, 4) proposals; class_probs (R, C) softmax over C+1 with background dropped."""
    R, C = class_probs.shape
    if R == 0:
        return BoxSelection(torch.empty(0, dtype=torch.int64, device=boxes.device), boxes[:0], class_probs[:0, 0])
    probs = class_probs.float()
    flat = probs.flatten()
    budget = max(8 * R, 1024)
    while True:
        if budget >= flat.numel():
            floor = float("-inf")                               # every pair: the full computation
        else:
            floor = min(cfg.score_thresh, float(flat.topk(budget).values[-1]))
        max_conf, exact = max_conf_per_class_nms(boxes, probs, cfg.nms_thresh, floor)
        if floor == float("-inf"):
            break
        n_exact = int(exact.sum())
        n_pass = int((max_conf >= cfg.score_thresh).sum())
        # exact when the threshold set is complete and, if it needs topping up, enough is known
        if n_pass >= cfg.min_boxes or n_exact >= min(cfg.min_boxes, R):
            break
        budget *= 4
    keep = _caffe_order(max_conf, cfg)
    return BoxSelection(keep, boxes[keep], max_conf[keep])


def select_boxes_reference(boxes: torch.Tensor, class_probs: torch.Tensor, cfg: SelectionConfig) -> BoxSelection:
    """The Caffe generate_tsv loop as written there: one NMS per class. Slow; for tests."""
    R, C = class_probs.shape
    max_conf = class_probs.new_zeros(R, dtype=torch.float32)
    for c in range(C):
        scores = class_probs[:, c].float()
        kept = nms(boxes.double(), scores.double(), cfg.nms_thresh)
        max_conf[kept] = torch.where(scores[kept] > max_conf[kept], scores[kept], max_conf[kept])
    keep = _caffe_order(max_conf, cfg)
    return BoxSelection(keep, boxes[keep], max_conf[keep])


def select_boxes_max_class(boxes: torch.Tensor, class_probs: torch.Tensor, regressed: torch.Tensor,
                           cfg: SelectionConfig) -> BoxSelection:
    """regressed (R, C, 4) class-specific boxes already clipped to the image."""
    R = class_probs.shape[0]
    if R == 0:
        return BoxSelection(torch.empty(0, dtype=torch.int64, device=boxes.device), boxes[:0], class_probs[:0, 0])
    conf, cls = class_probs.float().max(dim=1)
    cls_boxes = regressed[torch.arange(R, device=boxes.device), cls]
    keep = None
    for thresh in cfg.max_class_nms_thresholds:
        keep = nms(cls_boxes.double(), conf.double(), thresh)
        if keep.numel() >= cfg.min_boxes:
            break
    keep = keep[:cfg.max_boxes]
    return BoxSelection(keep, cls_boxes[keep], conf[keep])


def select_boxes(boxes: torch.Tensor, class_probs: torch.Tensor, cfg: SelectionConfig,
                 regressed: torch.Tensor | None = None) -> BoxSelection:
    if cfg.method == "caffe":
        return select_boxes_caffe(boxes, class_probs, cfg)
    if cfg.method == "max_class":
        if regressed is None:
            raise ValueError("max_class selection needs the regressed boxes")
        return select_boxes_max_class(boxes, class_probs, regressed, cfg)
    raise ValueError(f"unknown selection method {cfg.method!r}")
