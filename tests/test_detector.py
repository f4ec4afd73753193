"""The VG Faster R-CNN: layout, geometry, extraction semantics, batch agreement."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from detector import GeneralizedRCNN, preset
from detector.config import DetectorConfig, SelectionConfig
from detector.preprocess import pad_batch, prepare_image, resize_scale
from detector.proposal_generator import cell_anchors
from detector.selection import select_boxes_caffe, select_boxes_max_class, select_boxes_reference
from pipeline.extract import init_random_


@pytest.fixture(scope="module")
def tiny_model():
    model = GeneralizedRCNN(preset("tiny")).eval()
    init_random_(model, seed=0)
    return model


def _images(cfg, sizes, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        # smooth blobs rather than noise, so proposals vary in size
        base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
        img = np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))[:h, :w]
        out.append(prepare_image(img, cfg.input))
    return out


def _extract(model, prepared, **kw):
    batch, sizes = pad_batch([p.tensor for p in prepared])
    return model.extract(batch, sizes, [p.scale for p in prepared], [p.original_size for p in prepared], **kw)


# -- layout -------------------------------------------------------------------------------

def test_vg_r101_c4_has_the_reference_key_layout():
    with torch.device("meta"):
        model = GeneralizedRCNN(preset("vg-r101-c4"))
    state = model.state_dict()
    assert len(state) == 535 and not any(k.endswith("num_batches_tracked") for k in state)
    assert sum(v.numel() for v in state.values()) == 65_545_166        # docs/reference/detector.md §1.1
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["proposal_generator.rpn_head.conv.weight"] == (512, 1024, 3, 3)
    assert shapes["proposal_generator.rpn_head.objectness_logits.weight"] == (12, 512, 1, 1)
    assert shapes["proposal_generator.rpn_head.anchor_deltas.weight"] == (48, 512, 1, 1)
    assert shapes["roi_heads.box_predictor.cls_score.weight"] == (1601, 2048)
    assert shapes["roi_heads.box_predictor.bbox_pred.weight"] == (6400, 2048)
    assert shapes["roi_heads.box_predictor.cls_embedding.weight"] == (1601, 256)
    assert shapes["roi_heads.box_predictor.fc_attr.weight"] == (512, 2304)
    assert shapes["roi_heads.box_predictor.attr_score.weight"] == (401, 512)
    assert shapes["roi_heads.res5.0.shortcut.weight"] == (2048, 1024, 1, 1)
    assert shapes["backbone.stem.conv1.norm.running_var"] == (64,)
    assert len([k for k in state if k.startswith("backbone.res4.") and k.endswith("conv1.weight")]) == 23
    # stride in the 1x1 conv, res5 stride 1 dilation 2
    assert model.backbone.res3[0].conv1.stride == (2, 2) and model.backbone.res3[0].conv2.stride == (1, 1)
    assert model.roi_heads.res5[0].conv2.dilation == (2, 2) and model.roi_heads.res5[0].shortcut.stride == (1, 1)


def test_cell_anchors_match_detectron2_order():
    a = cell_anchors((64, 128, 256, 512), (0.5, 1.0, 2.0))
    assert a.shape == (12, 4)
    np.testing.assert_allclose(a[0].numpy(), [-45.25, -22.63, 45.25, 22.63], atol=0.01)
    np.testing.assert_allclose(a[1].numpy(), [-32, -32, 32, 32], atol=1e-4)
    np.testing.assert_allclose(a[3].numpy(), [-90.51, -45.25, 90.51, 45.25], atol=0.01)
    np.testing.assert_allclose(a[11].numpy(), [-181.02, -362.04, 181.02, 362.04], atol=0.01)


@pytest.mark.parametrize("h,w", [(601, 1000), (600, 999), (37, 53), (64, 64)])
def test_feature_sizes_follow_caffe_geometry(tiny_model, h, w):
    x = torch.zeros(1, 3, h, w)
    with torch.inference_mode():
        stem, _ = tiny_model.backbone.stem(x)
        res4 = tiny_model.backbone(x)["res4"]
    if (h, w) == (601, 1000):
        assert tuple(stem.shape[-2:]) == (150, 250)    # Caffe pool (pad 0, ceil); pad 1 would give 151
    assert tuple(res4.shape[-2:]) == tiny_model.backbone.feature_sizes([(h, w)])[0]


# -- config -------------------------------------------------------------------------------

def test_config_yaml_round_trip_and_unknown_keys(tmp_path):
    cfg = preset("tiny").replace(selection={"min_boxes": 10, "max_boxes": 100})
    cfg.to_yaml(tmp_path / "c.yaml")
    back = DetectorConfig.from_yaml(tmp_path / "c.yaml")
    assert back == cfg and back.selection.max_boxes == 100
    (tmp_path / "bad.yaml").write_text("name: x\nrpn: {hidden: 3}\n")
    with pytest.raises(ValueError, match="unknown keys.*hidden"):
        DetectorConfig.from_yaml(tmp_path / "bad.yaml")


def test_label_space_from_vocab_files(tmp_path):
    (tmp_path / "objects_vocab.txt").write_text("cat\ndog,puppy\nball\n")
    (tmp_path / "attributes_vocab.txt").write_text("red\nblue\n")
    cfg = preset("tiny").with_vocab(tmp_path / "objects_vocab.txt", tmp_path / "attributes_vocab.txt")
    assert (cfg.roi_heads.num_classes, cfg.roi_heads.num_attributes) == (3, 2)
    assert cfg.object_names() == ["cat", "dog", "ball"]
    model = GeneralizedRCNN(cfg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4          # + background
    assert model.roi_heads.box_predictor.attr_score.out_features == 3
    assert len(preset("vg-r101-c4").object_names()) == 1600
    assert len(preset("vg-r101-c4").attribute_names()) == 400


# -- preprocessing ------------------------------------------------------------------------

def test_resize_rule_and_bgr_mean():
    assert resize_scale(480, 640, 600, 1000) == pytest.approx(600 / 480)      # 600 x 800
    assert resize_scale(300, 1000, 600, 1000) == pytest.approx(1.0)           # long side capped
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    rgb[..., 0] = 200                                                        # pure red
    p = prepare_image(rgb, preset("vg-r101-c4").input)
    assert p.tensor.shape == (3, 500, 1000) and p.scale == pytest.approx(50.0)   # 60x would exceed 1000
    np.testing.assert_allclose(p.tensor[:, 5, 5].numpy(), [-102.9801, -115.9465, 200 - 122.7717], atol=1e-3)


# -- extraction ---------------------------------------------------------------------------

def test_extract_output_shapes_and_dtypes(tiny_model):
    cfg = tiny_model.cfg
    prepared = _images(cfg, [(120, 200), (300, 180)])
    out = _extract(tiny_model, prepared)
    for p, r in zip(prepared, out):
        k = r.boxes.shape[0]
        assert cfg.selection.min_boxes <= k <= cfg.selection.max_boxes
        assert r.features.shape == (k, cfg.feature_dim)
        assert r.objects_id.dtype == torch.int64 and r.attrs_id.dtype == torch.int64
        assert int(r.objects_id.max()) < cfg.roi_heads.num_classes                 # background excluded
        assert int(r.attrs_id.max()) < cfg.roi_heads.num_attributes                # no-attribute excluded
        assert ((r.objects_conf > 0) & (r.objects_conf <= 1)).all()
        H, W = p.original_size
        assert (r.boxes[:, 0] >= 0).all() and (r.boxes[:, 2] <= W).all() and (r.boxes[:, 3] <= H).all()
        assert (r.features >= 0).all()                                           # mean of ReLU outputs


def test_batch_matches_single_within_tolerance(tiny_model):
    """Padded batches give the batch-1 regions: same boxes (to 0.01 px), same ids, features
    within 1e-5 of their scale (measured ~2e-7: only float summation order differs)."""
    prepared = _images(tiny_model.cfg, [(300, 400), (240, 500), (333, 333), (500, 260)], seed=1)
    batched = _extract(tiny_model, prepared)
    for p, b in zip(prepared, batched):
        s = _extract(tiny_model, [p])[0]
        assert s.boxes.shape == b.boxes.shape
        torch.testing.assert_close(b.boxes, s.boxes, atol=0.01, rtol=0)
        assert torch.equal(b.objects_id, s.objects_id) and torch.equal(b.attrs_id, s.attrs_id)
        scale = float(s.features.abs().max())
        assert float((b.features - s.features).abs().max()) <= 1e-5 * scale


def test_folded_norms_match_the_plain_model(tiny_model):
    prepared = _images(tiny_model.cfg, [(200, 260)], seed=2)
    plain = _extract(tiny_model, prepared)[0]
    folded_model = copy.deepcopy(tiny_model).fold_norms_()
    folded = _extract(folded_model, prepared)[0]
    torch.testing.assert_close(folded.boxes, plain.boxes, atol=0.01, rtol=0)
    torch.testing.assert_close(folded.features, plain.features, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_runs_in_bf16_and_finds_the_same_most_confident_region(tiny_model):
    cfg = tiny_model.cfg
    prepared = _images(cfg, [(200, 260), (180, 300)], seed=3)
    low = _extract(tiny_model, prepared, autocast_dtype=torch.bfloat16)
    full = _extract(tiny_model, prepared)
    for r, f in zip(low, full):
        assert not torch.equal(r.features[:1], f.features[:1])              # bf16 really ran
        assert cfg.selection.min_boxes <= r.boxes.shape[0] <= cfg.selection.max_boxes
        assert torch.isfinite(r.features).all() and (r.features >= 0).all()
        # random weights move the regressed boxes a lot, but not the best score
        assert float(r.objects_conf.max()) == pytest.approx(float(f.objects_conf.max()), abs=0.01)


# -- box selection ------------------------------------------------------------------------

def _peaked_probs(R, C, gen, temperature):
    logits = torch.randn(R, C + 1, generator=gen) * temperature
    return torch.softmax(logits, dim=1)[:, :-1]


def _random_boxes(R, gen, size=200.0):
    xy = torch.rand(R, 2, generator=gen) * size
    wh = torch.rand(R, 2, generator=gen) * size / 2 + 4
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("temperature,min_boxes,max_boxes", [(6.0, 36, 36), (1.0, 36, 36), (8.0, 10, 100),
                                                             (3.0, 10, 100), (0.1, 5, 20)])
def test_one_call_per_class_nms_equals_the_per_class_loop(temperature, min_boxes, max_boxes):
    gen = torch.Generator().manual_seed(int(temperature * 10) + min_boxes)
    R, C = 120, 50
    boxes = _random_boxes(R, gen)
    probs = _peaked_probs(R, C, gen, temperature)
    cfg = SelectionConfig(min_boxes=min_boxes, max_boxes=max_boxes)
    fast = select_boxes_caffe(boxes, probs, cfg)
    ref = select_boxes_reference(boxes, probs, cfg)
    assert fast.keep.tolist() == ref.keep.tolist()
    torch.testing.assert_close(fast.max_conf, ref.max_conf)


def test_caffe_rule_order_and_counts():
    boxes = torch.tensor([[0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10], [0, 200, 10, 210]],
                         dtype=torch.float32)
    probs = torch.tensor([[0.3, 0.1], [0.05, 0.9], [0.1, 0.1], [0.25, 0.0]])
    sel = select_boxes_caffe(boxes, probs, SelectionConfig(min_boxes=1, max_boxes=4))
    assert sel.keep.tolist() == [0, 1, 3]                    # >= 0.2, in proposal order
    sel = select_boxes_caffe(boxes, probs, SelectionConfig(min_boxes=1, max_boxes=2))
    assert sel.keep.tolist() == [1, 0]                       # top 2 by max_conf
    sel = select_boxes_caffe(boxes, probs, SelectionConfig(min_boxes=4, max_boxes=4))
    assert sel.keep.tolist() == [1, 0, 3, 2]                 # topped up by max_conf


def test_per_class_nms_suppresses_within_a_class_only():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10]], dtype=torch.float32)   # IoU 0.82
    same = torch.tensor([[0.6, 0.0], [0.5, 0.0]])
    other = torch.tensor([[0.6, 0.0], [0.0, 0.5]])
    cfg = SelectionConfig(min_boxes=1, max_boxes=2)
    assert select_boxes_caffe(boxes, same, cfg).keep.tolist() == [0]
    assert select_boxes_caffe(boxes, other, cfg).keep.tolist() == [0, 1]


def test_max_class_selection_uses_regressed_boxes_and_relaxes_nms():
    gen = torch.Generator().manual_seed(5)
    R, C = 60, 8
    boxes = _random_boxes(R, gen)
    probs = _peaked_probs(R, C, gen, 3.0)
    regressed = boxes[:, None, :].expand(R, C, 4) + torch.arange(C).view(1, C, 1).float()
    sel = select_boxes_max_class(boxes, probs, regressed, SelectionConfig(method="max_class", min_boxes=36,
                                                                          max_boxes=36))
    assert len(sel.keep) == 36
    cls = probs.argmax(dim=1)
    torch.testing.assert_close(sel.boxes, regressed[sel.keep, cls[sel.keep]])
    assert (sel.max_conf[:-1] >= sel.max_conf[1:]).all()     # descending class score


def test_max_class_extraction_end_to_end(tiny_model):
    prepared = _images(tiny_model.cfg, [(200, 260)], seed=4)
    cfg = SelectionConfig(method="max_class", min_boxes=5, max_boxes=20)
    out = _extract(tiny_model, prepared, selection=cfg)[0]
    assert 1 <= out.boxes.shape[0] <= 20 and out.features.shape[1] == tiny_model.cfg.feature_dim


# -- fixed shapes (the GPU path), run here on the CPU ---------------------------------------

def _padded_problem(seed, counts, R=60, C=20, ties=True):
    """A padded batch of selection problems with duplicate boxes and tied scores (RoIPool
    makes both happen in real extractions, docs/reference/detector.md §5)."""
    gen = torch.Generator().manual_seed(seed)
    N = len(counts)
    boxes = torch.stack([_random_boxes(R, gen, size=120.0) for _ in range(N)])
    boxes[:, 5] = boxes[:, 4]
    logits = torch.randn(N, R, C + 1, generator=gen) * 3
    logits[:, 7] = logits[:, 6]
    probs = logits.softmax(-1)[..., :-1]
    if ties:
        probs = (probs * 64).round() / 64
    valid = torch.stack([torch.arange(R) < n for n in counts])
    return boxes, probs, valid


@pytest.mark.parametrize("min_boxes,max_boxes", [(10, 30), (36, 36), (5, 100)])
def test_fixed_shape_per_class_nms_equals_the_per_class_loop(min_boxes, max_boxes):
    from detector.selection import caffe_max_conf_fixed, caffe_order_fixed

    counts = [60, 41, 0, 7]
    boxes, probs, valid = _padded_problem(min_boxes + max_boxes, counts)
    cfg = SelectionConfig(min_boxes=min_boxes, max_boxes=max_boxes)
    max_conf = caffe_max_conf_fixed(boxes, probs, valid, cfg.nms_thresh)
    keep, count = caffe_order_fixed(max_conf, valid, cfg)
    assert keep.shape == (len(counts), max_boxes)
    for i, n in enumerate(counts):
        ref = select_boxes_reference(boxes[i, :n], probs[i, :n], cfg)
        assert keep[i, :count[i]].tolist() == ref.keep.tolist()
        assert torch.equal(max_conf[i, keep[i, :count[i]]], ref.max_conf)


@pytest.mark.parametrize("min_boxes", [5, 25, 60])
def test_fixed_shape_max_class_equals_the_relaxing_nms_loop(min_boxes):
    from detector.selection import max_class_keep, max_class_keep_fixed

    counts = [60, 33, 0]
    boxes, probs, valid = _padded_problem(min_boxes, counts)
    cfg = SelectionConfig(method="max_class", min_boxes=min_boxes, max_boxes=max(min_boxes, 30))
    conf = probs.amax(dim=2)
    keep, count = max_class_keep_fixed(boxes, conf, valid, cfg)
    for i, n in enumerate(counts):
        assert keep[i, :count[i]].tolist() == max_class_keep(boxes[i, :n], conf[i, :n], cfg).tolist()


@pytest.mark.parametrize("selection", [None, SelectionConfig(method="max_class", min_boxes=5, max_boxes=20),
                                       SelectionConfig(min_boxes=10, max_boxes=100)])
def test_sync_free_extraction_equals_the_pruned_one(tiny_model, selection):
    """The GPU's selection (fixed shapes, every class) saves exactly what the CPU's does."""
    prepared = _images(tiny_model.cfg, [(300, 400), (240, 500), (333, 333)], seed=5)
    pruned = _extract(tiny_model, prepared, selection=selection, sync_free=False)
    fixed = _extract(tiny_model, prepared, selection=selection, sync_free=True)
    for a, b in zip(pruned, fixed):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.features, b.features)
        assert torch.equal(a.objects_id, b.objects_id) and torch.equal(a.attrs_id, b.attrs_id)
        assert torch.equal(a.objects_conf, b.objects_conf) and a.num_proposals == b.num_proposals


def test_channels_last_and_padding_to_a_multiple_change_no_region(tiny_model):
    """What the extractor does on CUDA, checked on the CPU: a channels_last model and input,
    and the batch padded to multiples of 32 (a lone image too), give the same regions."""
    prepared = _images(tiny_model.cfg, [(301, 407), (250, 333)], seed=6)
    plain = _extract(tiny_model, prepared)
    model = copy.deepcopy(tiny_model).to(memory_format=torch.channels_last)
    for group in (prepared, prepared[:1]):
        batch, sizes = pad_batch([p.tensor for p in group], size_divisibility=32)
        assert batch.shape[-2] % 32 == 0 and batch.shape[-1] % 32 == 0
        out = model.extract(batch.contiguous(memory_format=torch.channels_last), sizes,
                            [p.scale for p in group], [p.original_size for p in group])
        for r, ref in zip(out, plain):
            torch.testing.assert_close(r.boxes, ref.boxes, atol=0.01, rtol=0)
            assert torch.equal(r.objects_id, ref.objects_id) and torch.equal(r.attrs_id, ref.attrs_id)
            assert float((r.features - ref.features).abs().max()) <= 1e-5 * float(ref.features.abs().max())


def test_proposals_drop_empty_and_nonfinite_boxes_as_a_filter_would(tiny_model):
    """Empty/NaN boxes are scored -inf instead of being filtered (no host read): the
    proposals equal filter -> NMS -> top-k."""
    from torchvision.ops import nms

    from detector.boxes import clip_boxes
    from detector.proposal_generator import RPNOutputs

    rpn = tiny_model.proposal_generator
    gen = torch.Generator().manual_seed(7)
    anchors = rpn.anchor_generator.grid_anchors(12, 15)
    n = anchors.shape[0]
    logits = torch.randn(n, generator=gen)
    deltas = torch.randn(n, 4, generator=gen) * 0.3
    deltas[::7, 0] = 50.0            # pushed outside the image: clipped to an empty box
    deltas[::11, 2] = float("nan")
    logits[::13] = float("nan")
    size = (12 * 16, 15 * 16)
    props, scores = rpn.find_top_proposals(RPNOutputs([anchors], [logits], [deltas]), [size])
    k = min(rpn.cfg.pre_nms_topk_test, n)
    top, idx = logits.topk(k)
    boxes = clip_boxes(rpn.box2box_transform.apply_deltas(deltas[idx], anchors[idx]), *size)
    real = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(1)
            & torch.isfinite(top))
    assert 0 < int(real.sum()) < k
    keep = nms(boxes[real].double(), top[real].double(), rpn.cfg.nms_thresh)[:rpn.cfg.post_nms_topk_test]
    assert torch.equal(props[0], boxes[real][keep]) and torch.equal(scores[0], top[real][keep])


def test_rpn_box_heads_stay_float32_under_autocast(tiny_model):
    head = tiny_model.proposal_generator.rpn_head
    x = torch.randn(1, head.conv.in_channels, 9, 11)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, deltas = head(x)
        hidden = torch.relu(head.conv(x))
    assert logits.dtype == deltas.dtype == torch.float32 and hidden.dtype == torch.bfloat16
    with torch.inference_mode():
        torch.testing.assert_close(deltas, head.anchor_deltas(hidden.float()))


def test_ieee_fp32_turns_tf32_off_on_cuda_and_restores_it():
    """The flags are process settings a CPU build has too: set inside, restored on exit."""
    from detector.device import ieee_fp32

    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if not hasattr(conv, "fp32_precision"):
        pytest.skip("torch before 2.9: legacy TF32 flags")
    before = conv.fp32_precision, matmul.fp32_precision
    with ieee_fp32(torch.device("cuda")):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with ieee_fp32(torch.device("cpu")):
        assert (conv.fp32_precision, matmul.fp32_precision) == before
