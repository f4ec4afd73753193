"""From command-line choices to a `DetectorTrainingJob` and a `TrainConfig`, checked up front.

`make_task` resolves the detector config (a preset, optionally overridden by a YAML file of
DetectorConfig sections), sets its label space from the data root's vocabularies, and
checks `init` weights against it, so every user mistake stops here with one line naming
the file, before any cluster starts. `schedule` is the preset's training schedule, the first
layer of the run's loop settings (`TrainConfig.from_layers`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from pipeline.detection.dataset import vg_paths
from pipeline.detection.labels import LabelSpace
from pipeline.detection.job import DetectorTrainingJob
from pipeline.errors import PipelineError
from pipeline.training.config import TrainConfig

# Training schedules per preset. AdamW rather than the SGD of detectron2/Caffe: the small
# presets train from random weights (no ImageNet backbone), where adaptive steps converge
# in far fewer updates. `validations`: how many times a run measures box mAP (evenly spaced,
# the last at the end) when no --val-every is given; the synthetic world's run is minutes
# long and a validation costs seconds, so not every epoch.
SCHEDULES: dict[str, dict[str, Any]] = {
    "synth": dict(epochs=8, batch_size=4, lr=2e-3, optimizer="adamw", weight_decay=1e-4, warmup=0.05,
                  clip_norm=10.0, log_every=10, validations=2),
    "tiny": dict(epochs=8, batch_size=4, lr=2e-3, optimizer="adamw", weight_decay=1e-4, warmup=0.05,
                 clip_norm=10.0, log_every=10, validations=2),
    "small": dict(epochs=12, batch_size=8, lr=1e-3, optimizer="adamw", weight_decay=1e-4, warmup=0.05,
                  clip_norm=10.0, log_every=20),
    # fine-tuning the real model from published or ImageNet-initialised weights on a GPU
    "vg-r101-c4": dict(epochs=12, batch_size=8, lr=1e-4, optimizer="adamw", weight_decay=1e-4, warmup=0.02,
                       clip_norm=10.0, log_every=20),
}


def resolve_detector_config(preset: str, config_path: str | os.PathLike | None = None):
    from detector.config import DetectorConfig, preset as load_preset

    try:
        cfg = load_preset(preset)
    except ValueError as err:
        raise PipelineError(str(err)) from None
    if config_path is None:
        return cfg
    import yaml

    path = Path(config_path)
    try:
        with open(path, encoding="utf-8") as fh:
            overrides = yaml.safe_load(fh)
    except FileNotFoundError:
        raise PipelineError("detector config not found", path) from None
    except (OSError, yaml.YAMLError) as err:
        raise PipelineError(f"cannot read the detector config: {err}", path) from None
    if not isinstance(overrides, dict):
        raise PipelineError("a detector config must be a mapping of DetectorConfig sections", path)
    try:
        cfg = cfg.replace(**overrides)
    except (ValueError, TypeError) as err:
        raise PipelineError(f"bad detector config: {err}", path) from None
    if not isinstance(cfg, DetectorConfig):
        raise PipelineError("bad detector config", path)
    return cfg


def make_task(data: str | os.PathLike, preset: str = "synth", *, config_path: str | os.PathLike | None = None,
              init: str | os.PathLike | None = None, val_fraction: float = 0.1) -> DetectorTrainingJob:
    from detector.checkpoint import CheckpointError, check_weights, weights_file

    paths = vg_paths(data)
    objects = LabelSpace.from_vocab(paths["objects_vocab"])          # refuses empty / ambiguous vocabularies
    attributes = LabelSpace.from_vocab(paths["attributes_vocab"])
    cfg = resolve_detector_config(preset, config_path)
    cfg = cfg.with_vocab(Path(paths["objects_vocab"]).resolve(), Path(paths["attributes_vocab"]).resolve())
    init_path = None
    if init is not None:
        init_path = Path(init)
        if not init_path.exists():
            raise PipelineError("--init weights not found", init_path)
        try:
            target = weights_file(init_path)
            check_weights(cfg, target)
        except CheckpointError as err:
            if "box_predictor" in err.message:
                raise PipelineError(
                    f"does not fit this data's label space ({len(objects)} objects in {paths['objects_vocab']}, "
                    f"{len(attributes)} attributes in {paths['attributes_vocab']}) or the {cfg.name} detector: "
                    f"{err.message.split(': ', 1)[-1]}", err.path) from None
            raise PipelineError(str(err)) from None
    return DetectorTrainingJob(data=str(Path(data).resolve()), detector=cfg.to_dict(),
                             init=None if init_path is None else str(init_path.resolve()), val_fraction=val_fraction)


def schedule(preset: str) -> dict[str, Any]:
    """The preset's loop settings (the first layer of `TrainConfig.from_layers`)."""
    values = dict(SCHEDULES.get(preset, SCHEDULES["small"]))
    values.pop("validations", None)
    return values


def with_validation_steps(config: TrainConfig, preset: str, num_train_images: int | None) -> TrainConfig:
    """The schedule's `validations` (how many box-mAP measurements a run makes) as a
    `val_every`, unless one was given."""
    validations = SCHEDULES.get(preset, SCHEDULES["small"]).get("validations")
    if validations and config.val_every is None and num_train_images:
        config = config.replace(val_every=max(1, math.ceil(config.total_steps(num_train_images) / validations)))
    return config


def train_config(preset: str, num_train_images: int | None = None, **overrides: Any) -> TrainConfig:
    """The preset's schedule with `overrides` (None values ignored); `steps` replaces `epochs`.
    With `num_train_images`, the schedule's `validations` become a `val_every`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return with_validation_steps(TrainConfig.from_layers(schedule(preset), given), preset, num_train_images)
