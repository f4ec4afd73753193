"""Detector training on Visual Genome-format annotations: data, evaluation, the training task.

The detector itself (modules, losses, matching, sampling) is in `detector/`; the training
loop is `pipeline.training.train`; the stage is `pipeline/stages/train_detector.py`.
"""

from pipeline.detection.box_map import ImageBoxes, box_map
from pipeline.detection.dataset import (DetectionBatches, DetectionData, DetectionExample, held_out,
                                        load_detection_data)
from pipeline.detection.labels import LabelSpace
from pipeline.detection.recipe import (SCHEDULES, make_task, resolve_detector_config, schedule, train_config,
                                       with_validation_steps)
from pipeline.detection.job import DetectorTrainingJob

__all__ = ["ImageBoxes", "box_map", "DetectionBatches", "DetectionData", "DetectionExample", "held_out",
           "load_detection_data", "LabelSpace", "SCHEDULES", "make_task", "resolve_detector_config",
           "schedule", "train_config", "with_validation_steps", "DetectorTrainingJob"]
