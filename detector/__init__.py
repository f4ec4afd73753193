"""The Visual Genome Faster R-CNN (bottom-up attention) on torch + torchvision.ops.

Plain modules with detectron2 names; no Dask, Parquet or CLI here. See detector/README.md.
"""

from detector.config import DetectorConfig, SelectionConfig, preset, PRESETS
from detector.rcnn import BatchRegions, GeneralizedRCNN, Regions, build_detector
from detector.selection import BoxSelection, select_boxes
from detector.checkpoint import (CheckpointError, load_weights, read_state, save_detector,
                                 load_detector)
from detector.inference import Detections, fast_rcnn_inference
from detector.losses import attribute_loss, fast_rcnn_losses, rpn_losses
from detector.matcher import Matcher
from detector.sampling import subsample_labels

__all__ = ["DetectorConfig", "SelectionConfig", "preset", "PRESETS", "GeneralizedRCNN", "Regions", "BatchRegions",
           "build_detector", "BoxSelection", "select_boxes", "CheckpointError", "load_weights",
           "read_state", "save_detector", "load_detector", "Detections", "fast_rcnn_inference",
           "attribute_loss", "fast_rcnn_losses", "rpn_losses", "Matcher", "subsample_labels"]
