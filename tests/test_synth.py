"""The synthetic world: its files read back through the readers (and pycocotools), its
facts are true, its answers need the image, and it is deterministic for a seed."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.readers import DataRoot
from pipeline.readers.coco import load_coco, read_captions
from pipeline.readers.gqa import read_choices, read_gqa_questions, read_scene_graphs
from pipeline.readers.image_ids import nlvr2_group
from pipeline.readers.nlvr2 import read_nlvr2
from pipeline.readers.vg import read_image_data, read_objects, read_question_answers, read_region_descriptions, \
    read_relationships, read_vocab
from pipeline.readers.vqa import read_vqa
from pipeline.synth.baselines import question_only_baselines
from pipeline.synth.generate import generate
from pipeline.synth.render import render_scene
from pipeline.synth.world import Scene, WorldConfig, sample_scene

IMAGES = 240


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> DataRoot:
    out = tmp_path_factory.mktemp("synth")
    generate(out, images=IMAGES, seed=7, workers=2)
    return DataRoot(out)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_expected_file_is_written_and_every_image_exists(world):
    assert world.missing() == []
    images = world.image_files()
    assert len(images) == IMAGES
    exts = collections.Counter(p.suffix for p in images.values())
    assert exts[".jpg"] > exts[".png"] > 0
    modes = collections.Counter(Image.open(p).mode for p in list(images.values()))
    assert modes["RGB"] > 0 and modes["L"] > 0   # a few grayscale files exercise decoding
    for p in list(images.values())[:50]:
        w, h = Image.open(p).size
        assert 160 <= w <= 480 and 160 <= h <= 480


def test_splits_are_disjoint_and_ids_resolve_to_image_files(world):
    images = set(world.image_files())
    used: dict[str, set[str]] = {}
    for split in ("train2014", "val2014"):
        ids = {c.image_id for c in read_captions(world.coco_captions(split))}
        assert ids == {q.image_id for q in read_vqa(world.vqa_questions(split), world.vqa_annotations(split))}
        used[f"coco/{split}"] = ids
    for split in ("train", "val", "testdev"):
        used[f"gqa/{split}"] = {q.image_id for q in read_gqa_questions(world.gqa_questions(split, balanced=False))}
    for split in ("train", "dev", "test1"):
        used[f"nlvr2/{split}"] = {i for e in read_nlvr2(world.nlvr2(split)) for i in (e.left_image_id, e.right_image_id)}
    vg_ids = {im.image_id for im in read_image_data(world.vg("image_data"))}
    names = sorted(used)
    for i, a in enumerate(names):
        assert used[a] and used[a] <= images, a
        for b in names[i + 1:]:
            assert not used[a] & used[b], (a, b)
    # GQA train/val images are Visual Genome images (as in reality); testdev and COCO are not
    assert used["gqa/train"] <= vg_ids and used["gqa/val"] <= vg_ids
    assert not used["gqa/testdev"] & vg_ids and not used["coco/train2014"] & vg_ids
    assert all(i.startswith("COCO_train2014_") for i in used["coco/train2014"])
    assert all(i.startswith("n") for i in used["gqa/testdev"])


def test_visual_genome_boxes_match_pixels(world):
    vocab_objects = [names[0] for names in read_vocab(world.vg_vocab("objects"))]
    vocab_attributes = {n for names in read_vocab(world.vg_vocab("attributes")) for n in names}
    images = read_objects(world.vg("objects"), world.vg("attributes"))
    sizes = {im.image_id: (im.width, im.height) for im in read_image_data(world.vg("image_data"))}
    checked = 0
    for im in images[:40]:
        pixels = np.asarray(Image.open(world.image_path(im.image_id)).convert("RGB"), dtype=np.float32)
        assert pixels.shape[1::-1] == sizes[im.image_id]
        corner = np.median(np.concatenate([pixels[:3, :3].reshape(-1, 3), pixels[-3:, -3:].reshape(-1, 3)]), axis=0)
        boxes = [b.xyxy for b in im.objects]
        for b, (x1, y1, x2, y2) in zip(im.objects, boxes):
            assert b.names[0] in vocab_objects and set(b.attributes) <= vocab_attributes and len(b.attributes) == 3
            assert 0 <= x1 < x2 <= sizes[im.image_id][0] and 0 <= y1 < y2 <= sizes[im.image_id][1]
            inside = pixels[int(y1):int(y2), int(x1):int(x2)]
            # the object shows inside its box: many pixels far from the background colour
            far = np.linalg.norm(inside - corner, axis=2) > 40
            if b.attributes[0] not in ("gray",):
                assert far.mean() > 0.15, (im.image_id, b)
            checked += 1
        for i, a in enumerate(boxes):   # objects never overlap
            for c in boxes[i + 1:]:
                assert a[2] <= c[0] or c[2] <= a[0] or a[3] <= c[1] or c[3] <= a[1]
    assert checked > 50


def test_rendered_boxes_are_tight():
    cfg = WorldConfig(patterns=("solid",))
    rng = np.random.default_rng(0)
    for _ in range(10):
        scene = sample_scene(rng, cfg)
        image, boxes = render_scene(scene)
        empty, _ = render_scene(Scene(scene.width, scene.height, scene.background, scene.grayscale, [], scene.seed))
        diff = np.abs(np.asarray(image, np.int32) - np.asarray(empty, np.int32)).max(axis=2) > 60
        for obj, (x1, y1, x2, y2) in zip(scene.objects, boxes):
            bx1, by1, bx2, by2 = obj.box
            region = np.zeros_like(diff)
            region[by1:by2, bx1:bx2] = diff[by1:by2, bx1:bx2]
            ys, xs = np.nonzero(region)
            if obj.color in ("gray",) or len(xs) == 0:
                continue   # too close to some backgrounds for a pixel threshold
            assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1
            assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1


def test_vg_text_files_read(world):
    assert len(read_relationships(world.vg("relationships"))) > 0
    regions = read_region_descriptions(world.vg("region_descriptions"))
    assert regions and all(r.source == "vg" for r in regions)
    qa = read_question_answers(world.vg("question_answers"))
    assert qa and all(q.answer.endswith(".") for q in qa)


def test_coco_captions_load_in_pycocotools(world):
    coco = load_coco(world.coco_captions("train2014"))
    per_image = collections.Counter(a["image_id"] for a in coco.dataset["annotations"])
    assert set(per_image.values()) == {5}
    assert len(coco.getImgIds()) == len(per_image)


def test_vqa_answers_are_human_like_and_balanced(world):
    qs = read_vqa(world.vqa_questions("train2014"), world.vqa_annotations("train2014"))
    assert all(len(q.answers) == 10 for q in qs)
    assert {q.answer_type for q in qs} == {"yes/no", "number", "other"}
    raw = [a for q in qs for a in q.answers]
    assert any(a != a.lower() for a in raw) and any(a.endswith(".") for a in raw)
    assert any(a in ("two", "three", "one", "zero") for a in raw)
    assert any(max(q.scores.values()) == 1.0 and len(q.scores) > 1 for q in qs)   # some disagreement
    assert all(q.scores.get(q.multiple_choice_answer) == 1.0 for q in qs)
    yes_no = collections.Counter(q.multiple_choice_answer for q in qs if q.answer_type == "yes/no")
    assert abs(yes_no["yes"] - yes_no["no"]) <= 0.2 * sum(yes_no.values())
    colors = collections.Counter(q.multiple_choice_answer for q in qs if q.question_type == "what color is the")
    assert max(colors.values()) <= 0.35 * sum(colors.values())


def _object_of(q, graph):
    ids = [op["argument"].rsplit("(", 1)[1].rstrip(")") for op in q.semantic
           if op["operation"] == "select" and "(" in op["argument"]]
    return [graph.objects[i] for i in ids]


def test_gqa_answers_follow_scene_graphs_and_entailment_is_real(world):
    qs = {q.question_id: q for q in read_gqa_questions(world.gqa_questions("val", balanced=False))}
    balanced = read_gqa_questions(world.gqa_questions("val"))
    assert balanced and all(q.is_balanced for q in balanced) and {q.question_id for q in balanced} <= set(qs)
    choices = read_choices(world.gqa_choices("val"))
    graphs = read_scene_graphs(world.gqa_scene_graphs("val"))
    attr_index = {"Color": 0, "Size": 1, "Pattern": 2}
    checked = 0
    for q in qs.values():
        assert q.answer in choices[q.question_id].valid or "Common" in q.types["detailed"]
        graph = graphs[q.image_id]
        objs = _object_of(q, graph)
        kind = q.types["detailed"]
        if kind.startswith("query") and kind[5:] in attr_index:
            assert q.answer == objs[0].attributes[attr_index[kind[5:]]]
            checked += 1
        if kind == "verifyRel":
            a, b = objs
            rel = q.semantic[-1]["argument"].split(",")[1]
            truth = (a.x + a.w <= b.x) if rel == "to the left of" else (b.x + b.w <= a.x)
            assert q.answer == ("yes" if truth else "no")
            checked += 1
        for e in q.entailed:   # an entailed question is about the same objects of the same image
            assert qs[e].image_id == q.image_id
            assert {o.object_id for o in _object_of(qs[e], graph)} == {o.object_id for o in objs}
    assert checked > 10


def test_nlvr2_sentences_have_several_pairs_with_both_labels(world):
    ex = read_nlvr2(world.nlvr2("train"))
    groups = collections.defaultdict(list)
    for e in ex:
        groups[nlvr2_group(e.identifier)].append(e)
    assert all(len(g) == 4 and len({x.sentence for x in g}) == 1 for g in groups.values())
    sets = collections.Counter(e.identifier.split("-")[1] for e in ex)
    assert set(sets.values()) == {8}   # two sentences per set, each with the set's four pairs
    labels = collections.Counter(e.label for e in ex)
    assert abs(labels[True] - labels[False]) <= 0.25 * len(ex)


def test_question_only_baselines_are_far_below_the_ceiling(world):
    b = question_only_baselines(world)
    assert b["vqa"]["ceiling"] > 95
    assert b["vqa"]["question_only"] < 60
    assert b["gqa"]["question_only"] < 60
    assert b["nlvr2"]["question_only"] <= 75


def test_same_seed_same_files(tmp_path):
    generate(tmp_path / "a", images=80, seed=3, workers=1)
    generate(tmp_path / "b", images=80, seed=3, workers=2)
    generate(tmp_path / "c", images=80, seed=4, workers=1)
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c


def test_synth_command_writes_summary_readme_and_baselines(tmp_path, capsys):
    from workflows.cli import main

    out = tmp_path / "world"
    assert main(["synth", "--out", str(out), "--images", "80", "--seed", "1", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "question-only vqa" in printed and "question-only nlvr2" in printed
    summary = json.loads((out / "synth_summary.json").read_text())
    assert summary["images"] == 80 and set(summary["baselines"]) == {"vqa", "gqa", "nlvr2"}
    assert "Question-only baselines" in (out / "README.md").read_text()


def test_synth_refuses_bad_arguments(tmp_path, capsys):
    from workflows.cli import main

    with pytest.raises(SystemExit) as err:
        main(["synth", "--out", str(tmp_path / "x"), "--images", "10"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["synth", "--out", str(tmp_path / "x"), "--shapes", "circle,blob"])
    assert err.value.code == 2
    assert "blob" in capsys.readouterr().err


def test_pretraining_entries_in_lxmert_format(world, tmp_path):
    from pipeline.readers.answers import AnswerVocab
    from pipeline.readers.lxmert_json import read_pretrain_json, write_pretrain_json
    from pipeline.readers.pretraining import pretrain_entries

    train, valid = pretrain_entries(world, "train"), pretrain_entries(world, "valid")
    train_ids, valid_ids = {e.image_id for e in train}, {e.image_id for e in valid}
    assert not train_ids & valid_ids
    gqa_val = {q.image_id for q in read_gqa_questions(world.gqa_questions("val", balanced=False))}
    assert not train_ids & gqa_val
    sources = collections.Counter(src for e in train for src in e.sentf)
    assert {"mscoco", "vqa", "vg", "gqa", "vgqa"} <= set(sources)
    for e in train + valid:
        for src, labels in e.labelf.items():
            assert len(labels) == len(e.sentf[src])
    assert set(world.image_files()) >= train_ids | valid_ids
    write_pretrain_json(tmp_path / "mscoco_train.json", train)
    assert read_pretrain_json(tmp_path / "mscoco_train.json") == train
    vocab = AnswerVocab.for_pretraining(train)
    assert {"yes", "no", "red", "1"} <= set(vocab.answers)


def test_data_info_on_the_synthetic_world(world, capsys):
    from workflows.cli import main

    assert main(["data", "info", str(world.root)]) == 0
    out = capsys.readouterr().out
    assert "all expected files present" in out
    assert f"files {IMAGES}" in out and "nlvr2/test1" in out and "gqa/testdev" in out


def test_rewriting_a_world_with_fewer_images_leaves_no_stale_images(tmp_path):
    from workflows.cli import main

    out = tmp_path / "w"
    assert main(["synth", "--out", str(out), "--images", "120", "--workers", "1", "--no-baselines"]) == 0
    assert main(["synth", "--out", str(out), "--images", "70", "--workers", "1", "--no-baselines"]) == 0
    assert len(DataRoot(out).image_files()) == 70
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(SystemExit) as err:
        main(["synth", "--out", str(tmp_path / "mine"), "--images", "70"])
    assert err.value.code == 2


def test_a_smaller_label_space_is_respected(tmp_path):
    cfg = WorldConfig(shapes=("circle", "square", "star"), colors=("red", "green", "blue"))
    generate(tmp_path, images=120, seed=2, cfg=cfg, workers=1)
    root = DataRoot(tmp_path)
    assert [n[0] for n in read_vocab(root.vg_vocab("objects"))] == ["circle", "square", "star"]
    names = {b.names[0] for im in read_objects(root.vg("objects")) for b in im.objects}
    assert names <= {"circle", "square", "star"}
    # no white/black/gray colour: no grayscale image (its colour facts could not be true)
    assert {Image.open(p).mode for p in root.image_files().values()} == {"RGB"}
