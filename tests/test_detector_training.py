"""Detector training: matching, sampling and losses against hand-computed values, frozen
stages, the VG detection data, box mAP against COCOeval, and short real runs (checkpoint ->
extract, exact resume, CLI errors). Data: hand-made VG files or a small synthetic world in
tmp_path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detector import GeneralizedRCNN, Matcher, preset, subsample_labels
from detector.boxes import Box2BoxTransform
from detector.losses import attribute_loss, fast_rcnn_losses, rpn_losses, smooth_l1_loss
from workflows.cli import main as cli
from pipeline.detection import (DetectorTrainingJob, ImageBoxes, box_map, held_out, load_detection_data, make_task,
                                train_config)
from pipeline.errors import PipelineError
from pipeline.training import RunDir, train


# -- matching and sampling ---------------------------------------------------------------

def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.80, 0.50, 0.20, 0.00, 0.65],
                        [0.10, 0.60, 0.29, 0.30, 0.10]])
    matches, labels = Matcher((0.3, 0.7), (0, -1, 1))(iou)
    assert matches.tolist() == [0, 1, 1, 1, 0]
    assert labels.tolist() == [1, -1, 0, -1, -1]        # 0.3 is already "ignore", 0.7 "object"
    # the RPN rule: gt 1 peaks at 0.6 (prediction 1), so that prediction becomes positive too
    _, labels = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 1, 0, -1, -1]
    # ties for a gt's best IoU all become positive
    _, labels = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)(torch.tensor([[0.4, 0.4, 0.1]]))
    assert labels.tolist() == [1, 1, 0]
    # RoI heads: one threshold, no low-quality matches; no gt = all background
    _, labels = Matcher((0.5,), (0, 1))(iou)
    assert labels.tolist() == [1, 1, 0, 0, 1]
    matches, labels = Matcher((0.5,), (0, 1))(torch.zeros((0, 3)))
    assert labels.tolist() == [0, 0, 0] and matches.tolist() == [0, 0, 0]
    # a gt that overlaps nothing does not turn everything positive
    _, labels = Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)(torch.zeros((1, 4)))
    assert labels.tolist() == [0, 0, 0, 0]


def test_subsample_labels_caps_positives_and_fills_with_negatives():
    labels = torch.tensor([1] * 10 + [0] * 100 + [-1] * 50)
    pos, neg = subsample_labels(labels, 20, 0.5, bg_label=0)
    assert len(pos) == 10 and len(neg) == 10
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    few = torch.tensor([1] * 3 + [0] * 100)
    pos, neg = subsample_labels(few, 20, 0.5, bg_label=0)
    assert len(pos) == 3 and len(neg) == 17                 # negatives fill the missing positives
    # RoI labels: classes 0..C-1 are positive, C (=5 here) is background, -1 ignored
    rois = torch.tensor([0, 3, 4, 5, 5, 5, -1, 2])
    pos, neg = subsample_labels(rois, 4, 0.25, bg_label=5)
    assert len(pos) == 1 and len(neg) == 3 and rois[pos].item() in (0, 2, 3, 4)
    a = subsample_labels(labels, 20, 0.5, 0, generator=torch.Generator().manual_seed(1))
    b = subsample_labels(labels, 20, 0.5, 0, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len(set(pos.tolist())) == len(pos)                # without replacement


def test_rpn_labels_the_best_anchor_of_a_small_object_positive():
    cfg = preset("tiny").rpn
    rpn = GeneralizedRCNN(preset("tiny")).proposal_generator
    anchors = rpn.anchor_generator.grid_anchors(6, 6)
    gt = torch.tensor([[40.0, 40.0, 52.0, 52.0]])           # 12 px: below 0.7 IoU with every anchor
    labels, matched = rpn.label_and_sample_anchors([anchors], [gt])
    labels = labels[0]
    best = torch.argmax(torchvision_iou(gt, anchors)[0])
    assert labels[best] == 1 and int((labels == 1).sum()) >= 1
    assert int((labels >= 0).sum()) == min(cfg.batch_size_per_image, len(anchors))
    assert torch.equal(matched[0][best], gt[0])


def torchvision_iou(a, b):
    from torchvision.ops import box_iou

    return box_iou(a, b)


# -- losses against hand computation -----------------------------------------------------

def test_smooth_l1_matches_torch_and_is_l1_at_beta_0():
    x, y = torch.randn(20, 4), torch.randn(20, 4)
    assert smooth_l1_loss(x, y, 0.0).item() == pytest.approx((x - y).abs().sum().item(), rel=1e-6)
    ref = F.smooth_l1_loss(x, y, beta=1 / 9, reduction="sum")
    assert smooth_l1_loss(x, y, 1 / 9).item() == pytest.approx(ref.item(), rel=1e-6)


def test_rpn_losses_by_hand():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 15, 15]])
    gt = torch.tensor([[0.0, 0, 10, 10], [2, 2, 22, 22], [0, 0, 1, 1]])
    logits = torch.tensor([2.0, -1.0, 0.5])
    deltas = torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    labels = torch.tensor([1, 1, -1], dtype=torch.int8)     # the third anchor was not sampled
    out = rpn_losses([logits], [deltas], [anchors], [labels], [gt], Box2BoxTransform((1, 1, 1, 1)),
                     batch_size_per_image=4)

    def bce(z, y):
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    assert out["loss_rpn_cls"].item() == pytest.approx((bce(2.0, 1) + bce(-1.0, 1)) / 4, rel=1e-6)
    # anchor 2 -> gt (2,2,22,22): same size, centre moved by 2 px on a 20 px box: deltas (0.1, 0.1, 0, 0)
    l1 = abs(0.1 - 0.0) + 0 + 0 + 0 + abs(0.0 - 0.1) + abs(0.0 - 0.1)
    assert out["loss_rpn_loc"].item() == pytest.approx(l1 / 4, rel=1e-5)


def test_fast_rcnn_losses_by_hand():
    C = 3
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]])
    proposals = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    gt_boxes = torch.tensor([[1.0, 1, 11, 11], [0, 0, 0, 0]])
    gt_classes = torch.tensor([0, C])                         # a foreground RoI and a background one
    deltas = torch.zeros(2, 4 * C)
    deltas[0, 0:4] = torch.tensor([0.5, 1.0, 0.0, 0.2])       # class 0's deltas of RoI 0
    deltas[0, 4:8] = 100.0                                    # other classes' deltas are not scored
    deltas[1] = 100.0                                         # nor background RoIs'
    out = fast_rcnn_losses(logits, deltas, proposals, gt_classes, gt_boxes, Box2BoxTransform((10, 10, 5, 5)))
    ce = (-math.log(math.exp(2) / (math.exp(2) + 3)) - math.log(math.exp(3) / (2 + math.exp(1) + math.exp(3)))) / 2
    assert out["loss_cls"].item() == pytest.approx(ce, rel=1e-6)
    # target: centre moves 1 px on a 10 px box -> 10 * 0.1 = 1 in x and y; same size -> 0, 0
    l1 = abs(0.5 - 1) + abs(1.0 - 1) + abs(0.0) + abs(0.2)
    assert out["loss_box_reg"].item() == pytest.approx(l1 / 2, rel=1e-5)   # divided by all sampled RoIs


def test_attribute_loss_by_hand_softmax_per_label_each_object_once():
    logits = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    gt = torch.tensor([[0, 2], [1, -1], [-1, -1]])            # two attributes, one, none
    logp = torch.log_softmax(logits, dim=1)
    expected = 0.5 * ((-(logp[0, 0] + logp[0, 2]) / 2) + -logp[1, 1]) / 2   # the unannotated one adds nothing
    assert attribute_loss(logits, gt, 0.5).item() == pytest.approx(expected.item(), rel=1e-6)
    # with n attributes the optimum is 1/n on each: a loss a BCE formulation would not give
    best = torch.tensor([[math.log(0.5), -30.0, math.log(0.5), -30.0]])
    assert attribute_loss(best, torch.tensor([[0, 2]]), 1.0).item() == pytest.approx(math.log(2), rel=1e-4)
    assert attribute_loss(logits, torch.full((3, 2), -1), 0.5).item() == 0.0
    assert attribute_loss(logits[:0], gt[:0], 0.5).item() == 0.0


# -- the model in training mode -----------------------------------------------------------

def _targets():
    return [{"boxes": torch.tensor([[10.0, 20, 80, 90], [100, 100, 200, 180]]), "classes": torch.tensor([1, 3]),
             "attributes": torch.tensor([[0, 5, -1], [2, -1, -1]])},
            {"boxes": torch.tensor([[30.0, 30, 60, 70]]), "classes": torch.tensor([9]),
             "attributes": torch.tensor([[16]])}]


def _small_labels(name="tiny", **resnet):
    cfg = preset(name).replace(roi_heads={"num_classes": 10, "num_attributes": 17})
    return cfg.replace(resnet=resnet) if resnet else cfg


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    torch.manual_seed(0)
    model = GeneralizedRCNN(_small_labels(freeze_at=2)).train()
    from torchvision.ops import FrozenBatchNorm2d

    assert isinstance(model.backbone.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.backbone.res2[0].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(model.backbone.res3[0].conv1.norm, torch.nn.BatchNorm2d)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    images = torch.randn(2, 3, 256, 320) * 50
    losses = model(images, [(256, 300), (240, 320)], _targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_attr"}
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("backbone.stem.", "backbone.res2."))
        assert p.requires_grad is not frozen, name
        assert (p.grad is None) is frozen, name               # everything else is in the graph (DDP)
    after = model.backbone.state_dict()
    for key in before:
        if key.startswith(("stem.", "res2.")):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["res3.0.conv1.norm.running_mean"], after["res3.0.conv1.norm.running_mean"])
    # freeze_at 0 trains the stem too
    model0 = GeneralizedRCNN(_small_labels(freeze_at=0)).train()
    sum(model0(images, [(256, 300), (240, 320)], _targets()).values()).backward()
    assert model0.backbone.stem.conv1.weight.grad.abs().sum() > 0


def test_gt_boxes_join_the_proposals_and_sampling_respects_the_fraction():
    torch.manual_seed(0)
    heads = GeneralizedRCNN(_small_labels()).roi_heads
    proposals = [torch.tensor([[0.0, 0, 5, 5]] * 40), torch.zeros((0, 4))]
    sampled = heads.label_and_sample_proposals(proposals, _targets())
    # image 1 has no proposal at all: its gt box is its one (foreground) RoI
    assert torch.equal(sampled.boxes[1], _targets()[1]["boxes"])
    assert sampled.gt_classes[-1].item() == 9 and sampled.gt_attributes[-1].tolist() == [16, -1, -1]
    n0 = len(sampled.boxes[0])
    fg0 = sampled.gt_classes[:n0] < 10
    assert int(fg0.sum()) == 2 and n0 == 42                  # both gts, and every background proposal
    assert sampled.gt_attributes.shape[1] == 3


# -- box mAP ------------------------------------------------------------------------------

def test_box_map_perfect_predictions_score_1():
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(5):
        xy = rng.uniform(0, 200, (4, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 80, (4, 2))], axis=1)
        classes = rng.integers(0, 3, 4)
        gts.append(ImageBoxes(boxes, classes))
        dets.append(ImageBoxes(boxes.copy(), classes.copy(), rng.uniform(0.5, 1, 4)))
    stats = box_map(gts, dets, num_classes=3)
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    assert box_map(gts, [ImageBoxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0))] * 5, 3)["AP"] == 0.0


def test_box_map_equals_cocoeval_run_from_json_files(tmp_path):
    """The in-memory COCO structures give exactly what COCOeval gives on files written the usual way."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(1)
    gts, dets, images, anns, results = [], [], [], [], []
    for i in range(8):
        xy = rng.uniform(0, 300, (5, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 120, (5, 2))], axis=1)
        classes = rng.integers(0, 4, 5)
        noisy = boxes + rng.normal(0, 6, boxes.shape)
        scores = rng.uniform(0, 1, 5)
        det_classes = np.where(rng.random(5) < 0.8, classes, rng.integers(0, 4, 5))
        gts.append(ImageBoxes(boxes, classes))
        dets.append(ImageBoxes(noisy, det_classes, scores))
        images.append({"id": 100 + i, "width": 500, "height": 500, "file_name": f"{i}.jpg"})
        for b, c in zip(boxes, classes):
            anns.append({"id": len(anns) + 7, "image_id": 100 + i, "category_id": int(c) + 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        for b, c, s in zip(noisy, det_classes, scores):
            results.append({"image_id": 100 + i, "category_id": int(c) + 1, "score": float(s),
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                  "categories": [{"id": c, "name": str(c)} for c in range(1, 5)]}))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    coco = COCO(str(tmp_path / "gt.json"))
    evaluator = COCOeval(coco, coco.loadRes(str(tmp_path / "dt.json")), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ours = box_map(gts, dets, num_classes=4)
    assert 0.05 < ours["AP"] < 0.95
    assert ours["AP"] == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert ours["AP50"] == pytest.approx(evaluator.stats[1], abs=1e-12)
    assert ours["AR100"] == pytest.approx(evaluator.stats[8], abs=1e-12)


def test_box_map_of_one_box_at_iou_0_62():
    gt = ImageBoxes(np.array([[0.0, 0, 100, 100]]), np.array([0]))
    # shifted by 23.5 px: IoU = 76.5 / 123.5 = 0.619 (matched at .50 .55 .60, not from .65 on)
    det = ImageBoxes(np.array([[23.5, 0, 123.5, 100]]), np.array([0]), np.array([0.9]))
    stats = box_map([gt], [det], num_classes=1)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == 0.0
    assert stats["AP"] == pytest.approx(0.3)


# -- the data ---------------------------------------------------------------------------

def _vg_root(tmp_path, objects=None, vocab=("circle", "square", "cross,plus"), attributes=("red", "gray,grey")):
    root = tmp_path / "data"
    (root / "vg").mkdir(parents=True)
    (root / "images").mkdir()
    objects = objects or {
        1: [("circle", 10, 10, 30, 30, ["red", "shiny"]), ("plus", 50, 40, 20, 20, ["grey", "gray"]),
            ("dragon", 0, 0, 5, 5, [])],
        2: [("square", 5, 5, 40, 60, []), ("circle", 70, 70, 80, 80, ["red"])],   # the second is clipped
        3: [("dragon", 1, 1, 10, 10, [])],                                         # nothing known: no objects
    }
    image_data, objs, attrs = [], [], []
    oid = 100
    for image_id, items in objects.items():
        Image.new("RGB", (120, 100), (200, 190, 180)).save(root / "images" / f"{image_id}.jpg")
        image_data.append({"image_id": image_id, "width": 120, "height": 100, "url": None, "coco_id": None})
        entries = []
        for name, x, y, w, h, a in items:
            oid += 1
            entries.append({"object_id": oid, "x": x, "y": y, "w": w, "h": h, "names": [name], "attributes": a})
        objs.append({"image_id": image_id, "objects": [{k: v for k, v in e.items() if k != "attributes"}
                                                       for e in entries]})
        attrs.append({"image_id": image_id, "attributes": entries})
    for name, data in (("image_data", image_data), ("objects", objs), ("attributes", attrs)):
        (root / "vg" / f"{name}.json").write_text(json.dumps(data))
    (root / "vg" / "objects_vocab.txt").write_text("\n".join(vocab) + "\n")
    (root / "vg" / "attributes_vocab.txt").write_text("\n".join(attributes) + "\n")
    return root


def test_vg_names_map_through_synonyms_and_unknowns_are_counted(tmp_path):
    data = load_detection_data(_vg_root(tmp_path), val_fraction=0.3)
    by_id = {e.image_id: e for e in data.train + data.val}
    assert set(by_id) == {"1", "2"}
    one = by_id["1"]
    assert one.classes.tolist() == [0, 2]                     # "plus" is the synonym of cross (line 3)
    assert one.attributes.tolist() == [[0], [1]]               # "grey"/"gray": one label; "shiny" unknown
    np.testing.assert_allclose(by_id["2"].boxes[1], [70, 70, 120, 100])   # clipped to the 120 x 100 image
    stats = data.stats
    assert stats["objects_unknown_name"] == 2 and stats["objects_unknown"] == {"dragon": 2}
    assert stats["attributes_unknown"] == {"shiny": 1} and stats["images_without_objects"] == 1
    # the held-out rule depends on the image id only: sha1("1") starts at 0.209 of 2^32, "2" at 0.853
    assert [e.image_id for e in data.val] == ["1"] and [e.image_id for e in data.train] == ["2"]
    assert held_out("1", 0.3) and not held_out("1", 0.2) and not held_out("2", 0.8)
    ids = [str(i) for i in range(2000)]
    share = np.mean([held_out(i, 0.1) for i in ids])
    assert 0.08 < share < 0.12


def test_flipped_batches_move_the_boxes_with_the_pixels(tmp_path):
    root = _vg_root(tmp_path)
    img = np.zeros((100, 120, 3), np.uint8)
    img[10:40, 10:40] = 255                                    # the circle's box, drawn white
    Image.fromarray(img).save(root / "images" / "1.jpg", quality=100)
    task = make_task(root, "tiny", val_fraction=0.01)
    data = task.dataset()
    example = [e for e in data.train + data.val if e.image_id == "1"][0]
    from pipeline.detection import DetectionBatches

    cfg = task.detector_config().input
    batches = DetectionBatches([example], cfg, train=True)
    lefts = set()
    for seed in range(8):
        batch = batches.make_batch(np.array([0]), np.random.default_rng(seed), 0)
        image, box = batch["images"][0], batch["targets"][0]["boxes"][0]
        x1, y1, x2, y2 = box.round().int().tolist()
        inside = image[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2].mean()
        assert inside > 100, (seed, box)       # white (mean-subtracted ~ +130) under the box, black ~ -110 elsewhere
        lefts.add(x1)
    assert len(lefts) == 2                     # flipped and unflipped both happened


# -- real runs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pipeline.synth.generate import generate

    out = tmp_path_factory.mktemp("world")
    generate(out, images=60, seed=3, workers=1)
    return out


SMALL_INPUT = "input: {min_size: 128, max_size: 192, min_size_train: [128]}\n"   # keeps the runs short


@pytest.fixture
def small_input(tmp_path):
    path = tmp_path / "small-input.yaml"
    path.write_text(SMALL_INPUT)
    return path


def _quick_config(**kw):
    values = dict(steps=6, batch_size=2, lr=2e-3, log_every=1, checkpoint_every=2, progress=False, seed=5)
    values.update(kw)
    return train_config("synth", **values)


def test_resumed_run_gives_the_uninterrupted_losses(tmp_path, world, small_input):
    task = make_task(world, "synth", config_path=small_input)
    full = RunDir(tmp_path / "full")
    full.check_writable()
    train(task, _quick_config(), full)
    cut = RunDir(tmp_path / "cut")
    cut.check_writable()
    train(task, _quick_config(), cut, stop_after=3)            # killed after step 3; last checkpoint: step 2
    train(task, _quick_config(), cut, resume=True)

    def losses(run):
        return [{k: v for k, v in m.items() if k != "examples_per_s"} for m in run.metrics()]

    assert losses(cut) == losses(full)
    assert [m["step"] for m in full.metrics() if m.get("split") == "val"] == [6]
    val = [m for m in full.metrics() if m.get("split") == "val"][0]
    assert {"AP", "AP50", "gt_box_object_accuracy", "gt_box_attribute_accuracy"} <= set(val)


def test_cli_trains_a_checkpoint_that_extract_loads(tmp_path, world, small_input, capsys):
    from detector import load_detector
    from pipeline.extract import Extractor, extract_shard, resolve_spec
    from pipeline.features import FeatureStore
    from pipeline.images import discover_images

    out = tmp_path / "run"
    args = ["train-detector", "--data", str(world), "--preset", "synth", "--config", str(small_input), "--out", str(out),
            "--steps", "4", "--batch-size", "2", "--checkpoint-every", "2", "--workers", "1", "--no-progress"]
    code = cli(args)
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 4 and results["final"] == str(out / "final") and results["val_images"] >= 1
    # the summary printed is the validation results.json keeps
    assert f"AP50 {results['validation']['AP50']:.3f} on {results['val_images']} held-out images" in \
        capsys.readouterr().err
    assert (out / "final" / "objects_vocab.txt").read_text() == (world / "vg" / "objects_vocab.txt").read_text()
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step-0000002", "step-0000004"]
    for ckpt in checkpoints:
        load_detector(ckpt)                                     # every checkpoint is a detector checkpoint
    spec = resolve_spec("synth", str(out / "final"))
    assert spec.detector_config().roi_heads.num_classes == 10 and spec.detector_config().roi_heads.num_attributes == 17
    entries = discover_images(world / "images")[:3]
    result = extract_shard(0, entries, tmp_path / "features", Extractor(spec), batch_size=2)
    assert result.info.num_rows == 3 and not result.failures
    # resuming a finished run is a no-op that keeps the results
    assert cli(args + ["--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["validation"] == results["validation"]
    # ... and one with other options is refused, naming the run's config
    assert cli(args[:-1] + ["--lr", "0.5", "--no-progress", "--resume"]) == 1
    assert "config.yaml" in capsys.readouterr().err


def test_user_errors_are_one_line_naming_the_file(tmp_path, world, capsys):
    def err(*args):
        assert cli(["train-detector", *args, "--no-progress"]) == 1
        message = capsys.readouterr().err.strip().splitlines()
        assert len(message) == 1, message
        return message[0]

    data = _vg_root(tmp_path)
    (data / "vg" / "objects.json").unlink()
    assert "objects.json" in err("--data", str(data), "--out", str(tmp_path / "r1"))
    assert "unknown detector preset" in err("--data", str(world), "--out", str(tmp_path / "r2"), "--preset", "huge")
    (tmp_path / "file").write_text("x")
    assert "not writable" in err("--data", str(world), "--out", str(tmp_path / "file" / "run"))
    # weights of another label space: the 1600/400-class preset layout vs this world's 10/17
    other = GeneralizedRCNN(preset("synth"))
    from detector import save_detector

    save_detector(other, tmp_path / "vg-labels")
    line = err("--data", str(world), "--out", str(tmp_path / "r3"), "--init", str(tmp_path / "vg-labels"))
    assert "label space" in line and "model.safetensors" in line
    bad_vocab = _vg_root(tmp_path / "b", vocab=("circle", "circle"))
    assert "names two classes" in err("--data", str(bad_vocab), "--out", str(tmp_path / "r4"))
    nothing = _vg_root(tmp_path / "c", vocab=("unicorn",))
    assert "none of the" in err("--data", str(nothing), "--out", str(tmp_path / "r5"))


def test_schedule_defaults_overrides_and_spaced_validations():
    config = train_config("synth", 283, lr=1e-3)
    assert config.epochs == 8 and config.batch_size == 4 and config.lr == 1e-3
    assert config.val_every == 280                      # 8 x 70 steps, validated twice: 280 and 560
    assert train_config("synth", 283, steps=50).epochs is None
    assert train_config("synth", 283, steps=50).val_every == 25
    assert train_config("synth", 283, val_every=7).val_every == 7
    with pytest.raises(PipelineError, match="training options: precision"):
        train_config("synth", 283, precision="fp8")


def test_task_pickles_without_its_loaded_data(world):
    import pickle

    task = make_task(world, "synth")
    task.dataset()
    copy = pickle.loads(pickle.dumps(task))
    assert isinstance(copy, DetectorTrainingJob) and copy._loaded is None and copy.detector == task.detector


@pytest.mark.slow
def test_two_gloo_ranks_train_the_detector_like_one_process(tmp_path, world, small_input):
    """DDP over two Dask workers: BN statistics differ per rank, so compare the losses'
    trend and the checkpoint format rather than exact numbers."""
    from safetensors.torch import load_file

    from pipeline.stages.train_detector import train_detector
    from workflows.executors import DaskExecutor

    with DaskExecutor(workers=2) as executor:
        results = train_detector(world, tmp_path / "ddp", executor, preset="synth", config=small_input,
                                 layers=[dict(steps=3, batch_size=4, progress=False, log_every=1)])
    assert results["step"] == 3 and (tmp_path / "ddp" / "results.json").exists()
    state = load_file(str(tmp_path / "ddp" / "final" / "model.safetensors"))
    assert "roi_heads.box_predictor.cls_score.weight" in state
