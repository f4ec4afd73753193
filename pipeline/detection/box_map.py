"""Box mAP with pycocotools' COCOeval (the number detection papers report).

Ground truth and detections are passed as arrays per image (x1, y1, x2, y2 in the same
pixels, class ids from 0) and turned into in-memory COCO structures: category id = class
id + 1, bbox = [x, y, w, h], area = w * h, iscrowd 0. COCOeval then runs unchanged, so AP is
AP@[.5:.95] over the classes that have ground truth, 101-point interpolation, up to 100
detections per image; AP50 and AP75 at single IoUs; APs/APm/APl by COCO area ranges (-1
when no gt falls in a range). COCOeval prints its progress; that is kept off stdout.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class ImageBoxes:
    boxes: np.ndarray                   # (K, 4) x1, y1, x2, y2
    classes: np.ndarray                 # (K,) int
    scores: np.ndarray | None = None    # (K,) for detections, None for ground truth


def _xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def box_map(ground_truth: list[ImageBoxes], detections: list[ImageBoxes], num_classes: int) -> dict[str, float]:
    """COCOeval bbox statistics; ground_truth[i] and detections[i] are the same image."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(ground_truth) != len(detections):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(detections)} detection lists")
    annotations, results = [], []
    for image_id, (gt, det) in enumerate(zip(ground_truth, detections)):
        for box, cls in zip(_xywh(gt.boxes), np.asarray(gt.classes).reshape(-1)):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
        for box, cls, score in zip(_xywh(det.boxes), np.asarray(det.classes).reshape(-1),
                                   np.asarray(det.scores).reshape(-1)):
            results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": box.tolist(),
                            "score": float(score)})
    if not annotations:
        raise ValueError("no ground-truth boxes to evaluate against")
    if not results:             # COCO.loadRes cannot take an empty list; nothing found is AP 0
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i} for i in range(len(ground_truth))], "annotations": annotations,
                           "categories": [{"id": c + 1} for c in range(num_classes)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
