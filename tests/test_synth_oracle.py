"""Ground-truth features of a synthetic world agree with the world's own annotation files."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import PipelineError
from pipeline.features import FeatureStore
from pipeline.synth.generate import generate
from pipeline.synth.oracle import write_oracle_store


def test_oracle_store_covers_every_image_with_the_annotated_objects(tmp_path):
    world = tmp_path / "world"
    summary = generate(world, images=120, seed=3, workers=1)
    (world / "synth_summary.json").write_text(json.dumps(summary))
    store = FeatureStore(write_oracle_store(world, tmp_path / "oracle", feature_dim=40))
    files = {p.stem for p in (world / "images").iterdir()}
    assert set(store.image_ids) == files
    assert store.metadata.num_objects == 10 and store.metadata.num_attributes == 17
    shapes = (world / "vg" / "objects_vocab.txt").read_text().split()
    for entry in json.loads((world / "vg" / "objects.json").read_text())[:10]:
        regions = store.get(str(entry["image_id"]))
        assert regions.num_boxes >= max(10, len(entry["objects"]))
        for j, obj in enumerate(entry["objects"]):
            # the drawn square contains the annotated tight box; the class is the true one
            x1, y1, x2, y2 = regions.boxes[j]
            assert x1 <= obj["x"] + 1 and y1 <= obj["y"] + 1
            assert x2 >= obj["x"] + obj["w"] - 1 and y2 >= obj["y"] + obj["h"] - 1
            assert shapes[regions.objects_id[j]].split(",")[0] == obj["names"][0]
            assert regions.features[j, regions.objects_id[j]] >= 5.0


def test_oracle_store_needs_a_synthetic_world(tmp_path):
    with pytest.raises(PipelineError, match="synth_summary.json"):
        write_oracle_store(tmp_path, tmp_path / "out")
