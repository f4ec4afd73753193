"""What LXMERT is fed: visual batches from the store, the run's tokenizer, configs that fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import LxmertConfig
from pipeline.errors import PipelineError
from pipeline.inputs import check_store_fits, config_for_store, read_visual, run_tokenizer
from pipeline.inputs.text import load_run_tokenizer
from tests.helpers.feature_data import make_image, make_metadata, make_store


def test_visual_batch_pads_variable_box_counts_and_normalises_boxes(tmp_path):
    images = [make_image(0, num_boxes=10, dim=16), make_image(1, num_boxes=36, dim=16)]
    store = make_store(tmp_path / "s", images)
    batch = read_visual(store, ["img000001", "img000000"])
    assert batch.features.shape == (2, 36, 16) and batch.features.dtype == np.float32
    assert batch.mask[0].sum() == 36 and batch.mask[1].sum() == 10
    im = images[0]
    expected = im.boxes / np.array([im.width, im.height, im.width, im.height], np.float32)
    np.testing.assert_allclose(batch.boxes[1, :10], expected, rtol=1e-6)
    np.testing.assert_array_equal(batch.features[1, :10], im.features.astype(np.float16).astype(np.float32))
    assert (batch.features[1, 10:] == 0).all() and (batch.objects_id[1, 10:] == -100).all()
    assert (batch.objects_conf[1, 10:] == 0).all()
    inputs = batch.model_inputs()
    assert inputs["visual_feats"].shape == (2, 36, 16)
    assert inputs["visual_attention_mask"].tolist() == [[1.0] * 36, [1.0] * 10 + [0.0] * 26]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_the_store_s_own_dtype_ships_its_exact_values_without_conversion(tmp_path, dtype):
    images = [make_image(i, num_boxes=k, dim=16) for i, k in enumerate((10, 36, 20))]
    store = make_store(tmp_path / "s", images, make_metadata(dim=16, dtype=dtype))
    ids = ["img000002", "img000000", "img000001"]
    stored = read_visual(store, ids, dtype=None)
    converted = read_visual(store, ids)
    assert stored.features.dtype == np.dtype(dtype) and converted.features.dtype == np.float32
    inputs = stored.model_inputs()
    assert inputs["visual_feats"].dtype == getattr(torch, dtype)
    np.testing.assert_array_equal(inputs["visual_feats"].numpy(), stored.features)
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(stored.features[i, :store.get(image_id).num_boxes], store.get(image_id).features)
    np.testing.assert_array_equal(stored.features.astype(np.float32), converted.features)
    assert (stored.features[1, 10:] == 0).all() and (stored.features[0, 20:] == 0).all()
    for name in ("boxes", "mask", "objects_id", "objects_conf", "attrs_id", "attrs_conf"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(converted, name))
    # fewer boxes than stored: the first ones of each image
    cut = read_visual(store, ids, num_boxes=12, dtype=None)
    assert cut.features.shape == (3, 12, 16) and cut.mask.sum() == 10 + 12 + 12
    np.testing.assert_array_equal(cut.features[2], store.get("img000001").features[:12])


def test_unpadded_batch_passes_no_visual_mask(tmp_path):
    store = make_store(tmp_path / "s", [make_image(i, dim=16) for i in range(3)])
    batch = read_visual(store, store.image_ids)
    assert not batch.padded and batch.model_inputs()["visual_attention_mask"] is None


def test_box_edges_a_fraction_outside_the_image_are_clipped_to_its_border(tmp_path):
    image = make_image(0, num_boxes=12, dim=16)
    w, h = image.width, image.height
    image.boxes[0] = [-0.4, -0.2, w + 0.3, h + 0.5]        # detector rounding past every edge
    store = make_store(tmp_path / "s", [image])
    boxes = read_visual(store, ["img000000"]).boxes[0]
    np.testing.assert_array_equal(boxes[0], [0.0, 0.0, 1.0, 1.0])
    scale = np.array([w, h, w, h], np.float32)
    np.testing.assert_allclose(boxes[1:], image.boxes[1:] / scale, rtol=1e-6)    # the rest untouched


def test_config_follows_the_store_and_mismatches_are_one_clear_error(tmp_path):
    meta = make_metadata(dim=16, num_objects=10, num_attributes=20)
    config = config_for_store(meta, "tiny", vocab_size=50)
    assert (config.visual_feat_dim, config.num_object_labels, config.num_attr_labels, config.vocab_size) == \
        (16, 10, 20, 50)
    check_store_fits(config, meta, tmp_path)
    other = make_metadata(dim=32, num_objects=1600, num_attributes=20, detector="vg-r101-c4")
    with pytest.raises(PipelineError) as err:
        check_store_fits(config, other, tmp_path / "features")
    message = str(err.value)
    assert "features" in message and "vg-r101-c4" in message and "feature dim 32" in message
    assert "1600 object classes" in message and "attribute" not in message
    # fine-tuned models have no label heads: only the feature dim must fit
    check_store_fits(LxmertConfig.preset("tiny", visual_feat_dim=16), make_metadata(dim=16, num_objects=3), tmp_path,
                     labels=False)


def test_run_tokenizer_is_learnt_once_saved_and_reused(tmp_path):
    corpus = ["a red circle left of a blue square", "is the star green?"] * 20
    run = tmp_path / "run"
    first = run_tokenizer(run, corpus=lambda: corpus)
    assert (run / "tokenizer" / "vocab.txt").is_file()
    assert first.unk_id not in first.encode_batch(["a red circle"]).input_ids[0]
    # a resumed run keeps its saved vocabulary even if the corpus it would learn from changed
    again = run_tokenizer(run, corpus=lambda: ["completely different words here"] * 5)
    assert again.get_vocab() == first.get_vocab()
    # a later stage takes it from the run (e.g. fine-tuning with --init RUN)
    other = run_tokenizer(tmp_path / "finetune", vocab=run)
    assert other.get_vocab() == first.get_vocab()
    assert load_run_tokenizer(tmp_path / "finetune").get_vocab() == first.get_vocab()
    with pytest.raises(PipelineError, match="no tokenizer"):
        load_run_tokenizer(tmp_path / "nothing-here")
    with pytest.raises(PipelineError, match="no sentences"):
        run_tokenizer(tmp_path / "empty", corpus=lambda: [])
