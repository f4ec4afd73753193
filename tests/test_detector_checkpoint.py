"""Checkpoint formats: detectron2 pickle, transformers-demo .bin, own safetensors; refusals."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from detector import CheckpointError, GeneralizedRCNN, load_detector, load_weights, preset, save_detector
from detector.checkpoint import CELL_ANCHORS_KEY, check_weights, read_state
from detector.preprocess import pad_batch, prepare_image
from pipeline.extract import init_random_


def _frozen_tiny():
    # vg-r101-c4 layout in miniature: FrozenBN, as the public checkpoints are loaded
    return preset("tiny").replace(resnet={"norm": "FrozenBN"})


@pytest.fixture(scope="module")
def source():
    model = GeneralizedRCNN(_frozen_tiny()).eval()
    init_random_(model, seed=11)
    with torch.no_grad():   # non-trivial norm statistics, so a wrong mapping would show
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                buf.uniform_(-0.1, 0.1)
    return model


def _outputs(model):
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 255, (12, 16, 3)).astype(np.uint8), np.ones((16, 16, 1), np.uint8))
    p = prepare_image(img, model.cfg.input)
    batch, sizes = pad_batch([p.tensor])
    return model.extract(batch, sizes, [p.scale], [p.original_size])[0]


def _assert_same(a, b):
    # FrozenBN and BatchNorm2d compute the same affine map in a different float order
    torch.testing.assert_close(a.boxes, b.boxes, atol=0.01, rtol=0)
    torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=1e-4)
    assert torch.equal(a.objects_id, b.objects_id) and torch.equal(a.attrs_id, b.attrs_id)


def _reference_keys(model) -> dict[str, torch.Tensor]:
    """The HF `pytorch_model.bin` layout: BN with num_batches_tracked, cell_anchors.0 inside."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key in list(state):
        if key.endswith("running_var"):
            state[key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    state[CELL_ANCHORS_KEY] = model.proposal_generator.anchor_generator.cell_anchors_0.clone()
    return state


def test_detectron2_pickle_loads_unchanged(tmp_path, source):
    arrays = {k: v.numpy().copy() for k, v in source.state_dict().items()}
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model": arrays, "__author__": "test", "matching_heuristics": True}, fh, protocol=2)
    target = GeneralizedRCNN(_frozen_tiny()).eval()
    report = load_weights(target, path)
    assert report.ok
    _assert_same(_outputs(target), _outputs(source))


def test_transformers_demo_bin_loads_unchanged(tmp_path, source):
    path = tmp_path / "pytorch_model.bin"
    torch.save(_reference_keys(source), path)
    target = GeneralizedRCNN(_frozen_tiny()).eval()
    report = load_weights(target, path)
    assert len([k for k in report.ignored if k.endswith("num_batches_tracked")]) > 0
    _assert_same(_outputs(target), _outputs(source))
    # the same file into a BatchNorm2d model (the HF port's norm) gives the same outputs
    bn = GeneralizedRCNN(preset("tiny")).eval()
    load_weights(bn, path)
    _assert_same(_outputs(bn), _outputs(source))


def test_key_report_lists_missing_unexpected_and_misshaped(tmp_path, source):
    state = _reference_keys(source)
    del state["roi_heads.box_predictor.fc_attr.weight"]
    state["roi_heads.box_predictor.extra.weight"] = torch.zeros(3)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(7, 5)
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(GeneralizedRCNN(_frozen_tiny()), path)
    msg = str(err.value)
    assert "broken.bin" in msg
    assert "1 missing key(s): roi_heads.box_predictor.fc_attr.weight" in msg
    assert "1 unexpected key(s): roi_heads.box_predictor.extra.weight" in msg
    assert "roi_heads.box_predictor.cls_score.weight file [7, 5]" in msg
    with pytest.raises(CheckpointError, match="missing"):
        check_weights(_frozen_tiny(), path)                 # the meta-device preflight agrees


def test_foreign_anchors_are_refused(tmp_path, source):
    state = _reference_keys(source)
    state[CELL_ANCHORS_KEY] = state[CELL_ANCHORS_KEY] * 0.5      # e.g. BUA's Caffe anchors
    path = tmp_path / "bua.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="cell_anchors"):
        load_weights(GeneralizedRCNN(_frozen_tiny()), path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model": {"backbone.stem.conv1.weight": _Exploit(marker)}}, fh)
    with pytest.raises(CheckpointError, match="refusing to load (posix|os).system"):
        read_state(path)
    assert not marker.exists()
    # the same payload in a torch file is refused by weights_only
    path2 = tmp_path / "evil.bin"
    with open(path2, "wb") as fh:
        pickle.dump(_Exploit(marker), fh)
    with pytest.raises(CheckpointError):
        read_state(path2)
    assert not marker.exists()


def test_other_bad_files_give_one_clear_error(tmp_path):
    (tmp_path / "empty.pkl").write_bytes(b"")
    (tmp_path / "text.bin").write_text("not weights")
    with pytest.raises(CheckpointError, match="empty file"):
        read_state(tmp_path / "empty.pkl")
    with pytest.raises(CheckpointError, match="text.bin"):
        read_state(tmp_path / "text.bin")
    with pytest.raises(CheckpointError, match="no such weights file"):
        read_state(tmp_path / "absent.pkl")


def test_own_safetensors_checkpoint_round_trip(tmp_path, source):
    save_detector(source, tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["config.yaml", "model.safetensors"]
    loaded = load_detector(tmp_path / "ckpt").eval()
    assert loaded.cfg == source.cfg
    _assert_same(_outputs(loaded), _outputs(source))
