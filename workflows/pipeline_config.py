"""The `lxmert-pipeline run` configuration: which stages run, with what settings, where.

    data: world                    # data root, laid out as the datasets ship (required)
    out: runs/world                # every stage writes under here (required)
    device: cpu                    # cpu | cuda
    workers: 2                     # local Dask workers (or `scheduler: tcp://host:8786`)
    detector:                      # optional: train the detector first (train-detector)
      preset: synth
      train: {steps: 600}
    extract:                       # images -> OUT/features (or `features: DIR`, an existing store)
      preset: tiny                 # the detector's; with `detector:` its trained weights are used
      weights: faster_rcnn_from_caffe_attr.pkl
      batch_size: 4
    pretrain:                      # optional: OUT/pretrain
      preset: demo
      train: {steps: 400, batch_size: 64}    # TrainConfig fields over the preset's recipe
      task: {qa_from_epoch: 0}               # PretrainOptions fields
    finetune:                      # run name -> OUT/finetune/<name>
      vqa:   {task: vqa, init: pretrain}     # init: pretrain | none (from scratch) | a checkpoint path
      gqa:   {task: gqa, init: pretrain, train: {epochs: 4}}
      nlvr2: {task: nlvr2, init: pretrain, language_only: false}
    evaluate:                      # run name -> splits (default: the run's validation split)
      vqa: [val2014]

Relative paths are taken from the current directory, as the other commands' flags are, and
made absolute when the file is read: the stages run on Dask workers that may sit in other
folders or on other hosts, and every path must be on a filesystem they all mount at the
same place (docs/cluster.md). An
unknown key anywhere is an error naming the file and the key: a typo must not silently
fall back to a default in a run that takes hours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from workflows.cluster import absolute

TOP_KEYS = {"data", "out", "device", "workers", "scheduler", "detector", "extract", "pretrain", "finetune",
            "evaluate"}
DETECTOR_KEYS = {"preset", "config", "init", "val_fraction", "train"}
EXTRACT_KEYS = {"features", "images", "preset", "weights", "batch_size", "shard_size", "dtype", "min_boxes",
                "max_boxes", "selection", "autocast", "decode_threads", "retries"}
PRETRAIN_KEYS = {"preset", "vocab", "answers", "train", "task"}
TRAIN_SECTION = "train"
# the reference's validation splits, where each task is scored by default
DEFAULT_SPLITS = {"vqa": "val2014", "gqa": "testdev", "nlvr2": "dev"}


@dataclass
class PipelineConfig:
    source: str
    data: str
    out: str
    device: str = "cpu"
    workers: int | None = None
    scheduler: str | None = None
    detector: dict[str, Any] | None = None
    extract: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] | None = None
    finetune: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate: dict[str, list[str]] = field(default_factory=dict)

    # -- where each stage writes -----------------------------------------------------------
    @property
    def detector_dir(self) -> Path:
        return Path(self.out) / "detector"

    @property
    def features_dir(self) -> Path:
        return Path(self.extract.get("features") or Path(self.out) / "features")

    @property
    def pretrain_dir(self) -> Path:
        return Path(self.out) / "pretrain"

    def finetune_dir(self, name: str) -> Path:
        return Path(self.out) / "finetune" / name

    def evaluation_dir(self, name: str, split: str) -> Path:
        return self.finetune_dir(name) / "evaluation" / split

    def splits(self, name: str) -> list[str]:
        """The splits run `name` is evaluated on."""
        if name in self.evaluate:
            return self.evaluate[name]
        section = self.finetune[name]
        valid = section.get("valid_split")
        return [valid] if valid and str(valid).lower() != "none" else [DEFAULT_SPLITS[section["task"]]]


def _mapping(value: Any, where: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PipelineError(f"`{where}` must be a mapping, not {type(value).__name__}", source)
    return value


def _known(section: dict[str, Any], keys: set[str], where: str, source: str) -> None:
    unknown = sorted(set(section) - keys)
    if unknown:
        raise PipelineError(f"unknown key(s) {unknown} in `{where}` (known: {sorted(keys)})", source)


def parse_pipeline_config(values: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    from pipeline.stages.finetune import FinetuneOptions

    values = _mapping(values, "the file", source)
    _known(values, TOP_KEYS, "the top level", source)
    for key in ("data", "out"):
        if not values.get(key):
            raise PipelineError(f"`{key}:` is required", source)
    detector = values.get("detector")
    if detector is not None:
        detector = _mapping(detector, "detector", source)
        _known(detector, DETECTOR_KEYS, "detector", source)
    extract = _mapping(values.get("extract"), "extract", source)
    _known(extract, EXTRACT_KEYS, "extract", source)
    if extract.get("features") and detector is not None:
        raise PipelineError("`extract.features` uses an existing store, so `detector:` would train for nothing",
                            source)
    pretrain = values.get("pretrain")
    if pretrain is not None:
        pretrain = _mapping(pretrain, "pretrain", source)
        _known(pretrain, PRETRAIN_KEYS, "pretrain", source)
    finetune = _mapping(values.get("finetune"), "finetune", source)
    option_keys = set(FinetuneOptions.__dataclass_fields__) - {"features", "data"}
    for name, section in finetune.items():
        section = _mapping(section, f"finetune.{name}", source)
        _known(section, option_keys | {TRAIN_SECTION}, f"finetune.{name}", source)
        if section.get("task") not in DEFAULT_SPLITS:
            raise PipelineError(f"`finetune.{name}.task` must be one of {sorted(DEFAULT_SPLITS)}", source)
        if str(section.get("init", "pretrain")) == "pretrain" and pretrain is None:
            raise PipelineError(f"`finetune.{name}` starts from the pretraining run (init: pretrain), but there is "
                                f"no `pretrain:` section (use init: none to train from scratch)", source)
        finetune[name] = section
    evaluate = _mapping(values.get("evaluate"), "evaluate", source)
    for name, splits in evaluate.items():
        if name not in finetune:
            raise PipelineError(f"`evaluate.{name}` names no run of `finetune:` ({sorted(finetune)})", source)
        if isinstance(splits, str):
            splits = [splits]
        if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
            raise PipelineError(f"`evaluate.{name}` must be a split or a list of splits", source)
        evaluate[name] = splits
    workers = values.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise PipelineError("`workers:` must be a positive integer", source)
    _absolute_paths(detector, extract, pretrain, finetune)
    return PipelineConfig(source=source, data=absolute(values["data"]), out=absolute(values["out"]),
                          device=str(values.get("device", "cpu")), workers=workers,
                          scheduler=values.get("scheduler"), detector=detector, extract=extract, pretrain=pretrain,
                          finetune=finetune, evaluate=evaluate)


# path keys of each section; MAYBE_PATHS may also hold a keyword or a hub name
PATHS = {"detector": ("config", "init"), "extract": ("features", "images"), "pretrain": ("answers",),
         "finetune": ("answers", "init_answers")}
MAYBE_PATHS = {"extract": ("weights",), "pretrain": ("vocab",), "finetune": ("init", "vocab")}


def _absolute_paths(detector, extract, pretrain, finetune) -> None:
    """Every path of the sections made absolute here, in place: the stages run on workers
    started in other folders (or on other hosts), where a relative path means another file."""
    sections = [("detector", detector), ("extract", extract), ("pretrain", pretrain),
                *(("finetune", section) for section in finetune.values())]
    for kind, section in sections:
        if not section:
            continue
        for key in PATHS.get(kind, ()):
            if section.get(key) is not None:
                section[key] = absolute(section[key])
        for key in MAYBE_PATHS.get(kind, ()):
            if section.get(key) is not None and str(section[key]) not in ("pretrain", "none", "random"):
                section[key] = absolute(section[key], only_if_exists=True)


def load_pipeline_config(path: str | os.PathLike) -> PipelineConfig:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh)
    except OSError as err:
        raise PipelineError(f"cannot read the pipeline config ({err.strerror or err})", path) from None
    except yaml.YAMLError as err:
        raise PipelineError(f"not valid YAML ({str(err).splitlines()[0]})", path) from None
    return parse_pipeline_config(values, str(path))
