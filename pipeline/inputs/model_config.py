"""An `LxmertConfig` that fits a feature store, and the check that a store fits a model.

The store's manifest says what the detector produced (feature dim, object and attribute
label counts); the model's visual encoder and its obj/attr heads must have the same sizes.
A mismatch is the usual mistake of pointing a run at features of another detector, so it is
one error naming the store and every size that differs, before any training starts.
"""

from __future__ import annotations

import os
from typing import Any

from model import LxmertConfig
from pipeline.errors import PipelineError


def config_for_store(metadata, preset: str = "base", *, vocab_size: int, **overrides: Any) -> LxmertConfig:
    """The `preset` network with the store's visual sizes and the tokenizer's vocabulary."""
    sizes = dict(visual_feat_dim=metadata.feature_dim, num_object_labels=metadata.num_objects,
                 num_attr_labels=metadata.num_attributes, vocab_size=vocab_size)
    try:
        return LxmertConfig.preset(preset, **{**sizes, **overrides})
    except (TypeError, ValueError) as err:
        raise PipelineError(f"model preset {preset!r}: {err}") from None


def check_store_fits(config: LxmertConfig, metadata, store_path: str | os.PathLike, *,
                     labels: bool = True) -> None:
    """Stop with one line when the store's features (and, for pretraining, its detector label
    space) do not have the sizes the model was built for."""
    problems = []
    if config.visual_feat_dim != metadata.feature_dim:
        problems.append(f"feature dim {metadata.feature_dim} (model expects {config.visual_feat_dim})")
    if labels and config.task_obj_predict:
        if config.visual_obj_loss and config.num_object_labels != metadata.num_objects:
            problems.append(f"{metadata.num_objects} object classes (model expects {config.num_object_labels})")
        if config.visual_attr_loss and config.num_attr_labels != metadata.num_attributes:
            problems.append(f"{metadata.num_attributes} attribute classes (model expects {config.num_attr_labels})")
    if problems:
        raise PipelineError(f"features made by detector {metadata.detector!r} do not fit the model: "
                            + "; ".join(problems), store_path)
