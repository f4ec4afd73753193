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

A padded batch (`select_batch`): the selection of every image at once, as (N, K) indices
and counts, K = max_boxes. Two ways to the same answer:
- `sync_free=False` (CPU): the pruned one-call NMS above, image by image. Its data-dependent
  sizes and the pruning loop read values on the host, which costs nothing on a CPU.
- `sync_free=True` (GPU): per-class greedy NMS over all C classes of all N images in fixed
  shapes (`detector.boxes.greedy_nms_fixed`, R steps over (N, C, R) masks), and the caffe /
  max_class orders by sorting; nothing reads a value on the host, so the GPU never waits for
  it. The work is the full computation (no pruning), which a GPU does in a few milliseconds
  per batch and a CPU would not want to.
Both are tested equal to `select_boxes_reference` / `select_boxes_max_class` on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import nms

from detector.boxes import batched_nms, greedy_nms_fixed, nms_iou
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


def caffe_max_conf(boxes: torch.Tensor, class_probs: torch.Tensor, cfg: SelectionConfig) -> torch.Tensor:
    """(R,) max_conf of the caffe rule for one image (pruned, exact where it decides the
    selection; see the module docstring). boxes (R, 4); class_probs (R, C) background dropped."""
    R, C = class_probs.shape
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
            return max_conf
        n_exact = int(exact.sum())
        n_pass = int((max_conf >= cfg.score_thresh).sum())
        # exact when the threshold set is complete and, if it needs topping up, enough is known
        if n_pass >= cfg.min_boxes or n_exact >= min(cfg.min_boxes, R):
            return max_conf
        budget *= 4


def select_boxes_caffe(boxes: torch.Tensor, class_probs: torch.Tensor, cfg: SelectionConfig) -> BoxSelection:
    """boxes (R, 4) proposals; class_probs (R, C) softmax over C+1 with background dropped."""
    R, C = class_probs.shape
    if R == 0:
        return BoxSelection(torch.empty(0, dtype=torch.int64, device=boxes.device), boxes[:0], class_probs[:0, 0])
    max_conf = caffe_max_conf(boxes, class_probs, cfg)
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


def max_class_keep(cls_boxes: torch.Tensor, conf: torch.Tensor, cfg: SelectionConfig) -> torch.Tensor:
    """The max_class rule on one image's argmax-class boxes (R, 4) and scores (R,): kept
    indices, best first."""
    keep = torch.empty(0, dtype=torch.int64, device=cls_boxes.device)
    for thresh in cfg.max_class_nms_thresholds:
        keep = nms(cls_boxes.double(), conf.double(), thresh)
        if keep.numel() >= cfg.min_boxes:
            break
    return keep[:cfg.max_boxes]


def select_boxes_max_class(boxes: torch.Tensor, class_probs: torch.Tensor, regressed: torch.Tensor,
                           cfg: SelectionConfig) -> BoxSelection:
    """regressed (R, C, 4) class-specific boxes already clipped to the image."""
    R = class_probs.shape[0]
    if R == 0:
        return BoxSelection(torch.empty(0, dtype=torch.int64, device=boxes.device), boxes[:0], class_probs[:0, 0])
    conf, cls = class_probs.float().max(dim=1)
    cls_boxes = regressed[torch.arange(R, device=boxes.device), cls]
    keep = max_class_keep(cls_boxes, conf, cfg)
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


# -- a padded batch -------------------------------------------------------------------------

@dataclass
class BatchSelection:
    """The saved regions of N images in K = max_boxes slots each: image n's are the first
    `count[n]` slots, in saved order; later slots hold arbitrary valid indices."""
    keep: torch.Tensor            # (N, K) int64 indices into the image's (padded) proposals
    count: torch.Tensor           # (N,) int64
    boxes: torch.Tensor           # (N, K, 4) saved boxes (proposals for caffe, regressed for max_class)
    max_conf: torch.Tensor        # (N, K) the score the selection ranked by


def _pad_columns(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, R) -> (N, max(R, k)) padded with index 0 (slots past a count are never read)."""
    return x if x.shape[1] >= k else torch.nn.functional.pad(x, (0, k - x.shape[1]))


def _first_ranks(flags: torch.Tensor) -> torch.Tensor:
    """(N, R) bool -> (N, R) positions with the True ones first, each group in index order."""
    return torch.sort((~flags).to(torch.uint8), dim=1, stable=True).indices


def caffe_max_conf_fixed(boxes: torch.Tensor, class_probs: torch.Tensor, valid: torch.Tensor,
                         nms_thresh: float) -> torch.Tensor:
    """max_conf of every proposal of every image: per-class greedy NMS (IoU in float64, as
    the reference's NMS) over all C classes, in fixed shapes. boxes (N, R, 4), class_probs
    (N, R, C) background dropped, valid (N, R) -> (N, R) float32, 0 on padding."""
    probs = class_probs.float().transpose(1, 2)                           # (N, C, R)
    N, C, R = probs.shape
    order = torch.sort(torch.where(valid[:, None, :], probs, -1.0), dim=2, descending=True, stable=True).indices
    valid_rank = valid[:, None, :].expand(N, C, R).gather(2, order)
    suppresses = (nms_iou(boxes.double()) > nms_thresh)[:, None]          # (N, 1, R, R): shared by the classes
    kept_rank = greedy_nms_fixed(suppresses, order, valid_rank)
    kept = torch.zeros_like(kept_rank).scatter_(2, order, kept_rank)      # by proposal
    return torch.where(kept, probs, 0.0).amax(dim=1)


def caffe_order_fixed(max_conf: torch.Tensor, valid: torch.Tensor, cfg: SelectionConfig
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """`_caffe_order` of every image at once: (N, R) max_conf and validity -> (keep (N, K),
    count (N,)). The threshold set in proposal order, unless it has fewer than min_boxes
    (then the top min_boxes by max_conf) or more than max_boxes (the top max_boxes)."""
    K = cfg.max_boxes
    passing = valid & (max_conf >= cfg.score_thresh)
    n_pass, n_valid = passing.sum(dim=1), valid.sum(dim=1)
    in_place = _pad_columns(_first_ranks(passing), K)[:, :K]
    by_conf = torch.sort(torch.where(valid, max_conf, -1.0), dim=1, descending=True, stable=True).indices
    by_conf = _pad_columns(by_conf, K)[:, :K]
    top_up, cut = n_pass < cfg.min_boxes, n_pass > cfg.max_boxes
    keep = torch.where((top_up | cut)[:, None], by_conf, in_place)
    count = torch.where(top_up, n_valid.clamp(max=cfg.min_boxes), torch.where(cut, K, n_pass))
    return keep, count


def max_class_keep_fixed(cls_boxes: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor,
                         cfg: SelectionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """`max_class_keep` of every image at once, every threshold of the relaxation in one
    greedy pass: cls_boxes (N, R, 4), conf (N, R), valid (N, R) -> (keep (N, K), count (N,))."""
    N, R = conf.shape
    K, T = cfg.max_boxes, len(cfg.max_class_nms_thresholds)
    order = torch.sort(torch.where(valid, conf.float(), float("-inf")), dim=1, descending=True, stable=True).indices
    iou = nms_iou(cls_boxes.double())
    suppresses = torch.stack([iou > t for t in cfg.max_class_nms_thresholds], dim=1)    # (N, T, R, R)
    kept = greedy_nms_fixed(suppresses, order[:, None, :].expand(N, T, R),
                            valid.gather(1, order)[:, None, :].expand(N, T, R))          # (N, T, R) by rank
    n_kept = kept.sum(dim=2)
    enough = n_kept >= cfg.min_boxes
    # the first threshold that keeps min_boxes, else the last one (as the loop ends)
    chosen = torch.where(enough.any(dim=1), enough.to(torch.uint8).argmax(dim=1), T - 1)
    rows = torch.arange(N, device=conf.device)
    ranks = _first_ranks(kept[rows, chosen])
    keep = _pad_columns(order.gather(1, ranks), K)[:, :K]
    return keep, n_kept[rows, chosen].clamp(max=K)


def _pad_keeps(keeps: list[torch.Tensor], k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.zeros((len(keeps), k), dtype=torch.int64, device=device)
    for i, kp in enumerate(keeps):
        keep[i, :len(kp)] = kp
    return keep, torch.tensor([len(kp) for kp in keeps], dtype=torch.int64, device=device)


def select_batch(boxes: torch.Tensor, class_probs: torch.Tensor, valid: torch.Tensor, counts: list[int],
                 cfg: SelectionConfig, cls_boxes: torch.Tensor | None = None, *,
                 sync_free: bool) -> BatchSelection:
    """The saved regions of a padded batch. boxes (N, R, 4) proposals, class_probs (N, R, C)
    background dropped, valid (N, R) = rank < counts[n]; cls_boxes (N, R, 4): each proposal's
    regressed box of its argmax class, clipped (max_class only). `sync_free`: the fixed-shape
    algorithms (GPU) instead of the pruned per-image ones (CPU); same answer."""
    N, R, _ = boxes.shape
    device = boxes.device
    if cfg.method == "caffe":
        if sync_free:
            max_conf = caffe_max_conf_fixed(boxes, class_probs, valid, cfg.nms_thresh)
        else:
            max_conf = class_probs.new_zeros((N, R), dtype=torch.float32)
            for i, n in enumerate(counts):
                if n:
                    max_conf[i, :n] = caffe_max_conf(boxes[i, :n], class_probs[i, :n], cfg)
        keep, count = caffe_order_fixed(max_conf, valid, cfg)
        saved = boxes
    elif cfg.method == "max_class":
        if cls_boxes is None:
            raise ValueError("max_class selection needs the regressed boxes")
        max_conf = class_probs.float().amax(dim=2)
        if sync_free:
            keep, count = max_class_keep_fixed(cls_boxes, max_conf, valid, cfg)
        else:
            keep, count = _pad_keeps([max_class_keep(cls_boxes[i, :n], max_conf[i, :n], cfg)
                                      for i, n in enumerate(counts)], cfg.max_boxes, device)
        saved = cls_boxes
    else:
        raise ValueError(f"unknown selection method {cfg.method!r}")
    return BatchSelection(keep, count, saved.gather(1, keep[:, :, None].expand(N, keep.shape[1], 4)),
                          max_conf.gather(1, keep))
