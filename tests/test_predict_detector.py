"""Which detector extracts new images for `predict`: the one the run's features came from."""

from __future__ import annotations

import pytest
import torch

from detector import build_detector, preset, save_detector
from pipeline.errors import PipelineError
from pipeline.extract import spec_for_store
from pipeline.features.shard import file_sha256
from tests.helpers.feature_data import make_metadata


def test_the_store_s_detector_is_found_beside_it_only_when_its_hash_matches(tmp_path):
    torch.manual_seed(0)
    cfg = preset("tiny")
    final = save_detector(build_detector(cfg), tmp_path / "detector" / "final")
    sha = file_sha256(final / "model.safetensors")
    meta = make_metadata(dim=cfg.feature_dim, num_objects=cfg.roi_heads.num_classes)
    meta.detector_config, meta.weights_sha256 = cfg.to_dict(), sha
    spec = spec_for_store(meta, tmp_path / "features")
    assert spec.weights == str((final / "model.safetensors").resolve()) and spec.weights_sha256 == sha
    meta.weights_sha256 = "0" * 64       # another detector made the store: never taken silently
    with pytest.raises(PipelineError, match="pass --detector"):
        spec_for_store(meta, tmp_path / "features")
    assert spec_for_store(meta, tmp_path / "features", str(final)).weights.endswith("model.safetensors")


def test_random_and_detector_free_stores(tmp_path):
    meta = make_metadata()
    meta.detector_config, meta.weights_sha256 = preset("tiny").to_dict(), "random"
    assert spec_for_store(meta, tmp_path).weights == "random"
    oracle = make_metadata(detector="oracle")
    oracle.weights_sha256 = "none"
    with pytest.raises(PipelineError, match="not made by a detector"):
        spec_for_store(oracle, tmp_path)
