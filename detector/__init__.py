"""The Visual Genome Faster R-CNN (bottom-up attention) on torch + torchvision.ops.

Plain modules with detectron2 names; no Dask, Parquet or CLI here. See detector/README.md.
"""

from detector.config import DetectorConfig, SelectionConfig, preset, PRESETS
from detector.rcnn import GeneralizedRCNN, Regions, build_detector
from detector.selection import BoxSelection, select_boxes
from detector.checkpoint import (CheckpointError, load_weights, read_state, save_detector,
                                 load_detector)

__all__ = ["DetectorConfig", "SelectionConfig", "preset", "PRESETS", "GeneralizedRCNN", "Regions",
           "build_detector", "BoxSelection", "select_boxes", "CheckpointError", "load_weights",
           "read_state", "save_detector", "load_detector"]
