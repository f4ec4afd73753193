"""`DetectorTrainingJob`: detector training as a task of the one training loop.

The loop (pipeline/training/loop.py) does everything generic: batches, optimiser, schedule,
checkpoints, resume, DDP, metrics.jsonl. This task says how: the model is a
`GeneralizedRCNN` whose label space is the data's vocabularies (optionally initialised from
`init` weights); a batch is a padded image batch with per-image targets (dataset.py); the
loss is the sum of the detector's five losses (RPN objectness and deltas, Fast R-CNN class
and boxes, attributes); validation is box mAP (COCOeval) on the held-out split plus how
often the heads name a gt box's class and one of its attributes right (what the features'
objects_id / attrs_id will be worth downstream); a checkpoint is `save_detector`'s
config.yaml + model.safetensors (what `extract --weights DIR` loads) with the two
vocabularies beside it, so the label names travel with the weights.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from pipeline.detection.box_map import ImageBoxes, box_map
from pipeline.detection.dataset import DetectionBatches, DetectionData, load_detection_data
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TASK_NAME = "train-detector"


@dataclass
class DetectorTrainingJob:
    data: str                               # data root with vg/ and images/
    detector: dict                          # full DetectorConfig dict, label space = the data's vocab
    init: str | None = None                 # weights to start from (any format detector/checkpoint.py reads)
    val_fraction: float = 0.1
    name: str = TASK_NAME
    find_unused_parameters: bool = False    # every parameter is in every step's graph
    _loaded: DetectionData | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        # shipped to Dask workers: they read the annotations themselves
        return {**self.__dict__, "_loaded": None}

    def detector_config(self):
        from detector.config import DetectorConfig

        return DetectorConfig.from_dict(self.detector)

    def dataset(self) -> DetectionData:
        if self._loaded is None:
            self._loaded = load_detection_data(self.data, val_fraction=self.val_fraction)
        return self._loaded

    # -- the TrainingJob protocol ------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        from detector.checkpoint import CheckpointError, load_weights
        from detector.rcnn import GeneralizedRCNN

        model = GeneralizedRCNN(self.detector_config())
        if self.init:
            try:
                load_weights(model, self.init)
            except CheckpointError as err:
                raise PipelineError(str(err)) from None
        return model

    def train_data(self) -> DetectionBatches:
        return DetectionBatches(self.dataset().train, self.detector_config().input, train=True)

    def val_data(self) -> DetectionBatches:
        return DetectionBatches(self.dataset().val, self.detector_config().input, train=False)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], epoch: int
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = model(batch["images"], batch["image_sizes"].tolist(), batch["targets"])
        return sum(losses.values()), losses

    def validate(self, model: torch.nn.Module, batches: Iterable[dict[str, Any]], epoch: int) -> dict[str, float]:
        ground_truth, detections = [], []
        objects_right = attributes_right = objects_total = attributes_total = 0
        for batch in batches:
            sizes = [tuple(s) for s in batch["image_sizes"].tolist()]
            n = len(sizes)
            found = model.detect(batch["images"], sizes, [1.0] * n, sizes)
            gt_boxes = [t["boxes"] for t in batch["targets"]]
            class_probs, attr_probs = model.classify_boxes(batch["images"], sizes, gt_boxes)
            start = 0
            for j, (dets, target) in enumerate(zip(found, batch["targets"])):
                sx, sy = batch["scales"][j].tolist()
                to_original = torch.tensor([sx, sy, sx, sy])
                ground_truth.append(ImageBoxes((target["boxes"].cpu() / to_original).numpy(),
                                               target["classes"].cpu().numpy()))
                detections.append(ImageBoxes((dets.boxes.cpu() / to_original).numpy(), dets.classes.cpu().numpy(),
                                             dets.scores.cpu().numpy()))
                g = len(target["classes"])
                objects_id = class_probs[start:start + g, :-1].argmax(dim=1).cpu()
                attrs_id = attr_probs[start:start + g, :-1].argmax(dim=1).cpu()
                start += g
                objects_right += int((objects_id == target["classes"].cpu()).sum())
                objects_total += g
                gt_attrs = target["attributes"].cpu()
                annotated = (gt_attrs >= 0).any(dim=1)
                attributes_right += int(((gt_attrs == attrs_id[:, None]) & (gt_attrs >= 0)).any(dim=1).sum())
                attributes_total += int(annotated.sum())
        metrics = box_map(ground_truth, detections, self.detector_config().roi_heads.num_classes)
        out = {name: metrics[name] for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")}
        out["gt_box_object_accuracy"] = objects_right / max(objects_total, 1)
        out["gt_box_attribute_accuracy"] = attributes_right / max(attributes_total, 1)
        return out

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        from detector.checkpoint import save_detector

        save_detector(model, directory)
        cfg = self.detector_config()
        for path in (cfg.objects_vocab, cfg.attributes_vocab):
            if path and os.path.isfile(path):
                shutil.copyfile(path, Path(directory) / os.path.basename(path))

    def describe(self) -> dict[str, Any]:
        return {"data": self.data, "init": self.init, "val_fraction": self.val_fraction, "detector": self.detector}
