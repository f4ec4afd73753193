"""A small synthetic world with its ground-truth feature store, for the pretraining tests."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.synth.generate import generate
from pipeline.synth.oracle import write_oracle_store


def make_world(root: Path, images: int = 100, seed: int = 0, feature_dim: int = 32) -> tuple[Path, Path]:
    """(data root, feature store) of a fresh synthetic world under `root`."""
    world = root / "world"
    summary = generate(world, images=images, seed=seed, workers=1)
    (world / "synth_summary.json").write_text(json.dumps(summary))
    store = write_oracle_store(world, root / "features", feature_dim=feature_dim)
    return world, store
