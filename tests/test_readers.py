"""Readers on small hand-written files in the real formats, and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.readers import DataRoot
from pipeline.readers.answers import AnswerVocab, convert_ans, normalize_vqa_answer, soft_scores, vqa_score
from pipeline.readers.coco import load_coco, read_captions
from pipeline.readers.gqa import read_choices, read_gqa_questions, read_scene_graphs
from pipeline.readers.image_ids import (coco_image_id, image_id_from_path, nlvr2_group, nlvr2_image_ids,
                                        parse_coco_image_id)
from pipeline.readers.lxmert_json import read_pretrain_json, read_task_json, write_task_json
from pipeline.readers.nlvr2 import read_nlvr2
from pipeline.readers.vg import (read_image_data, read_objects, read_question_answers, read_region_descriptions,
                                 read_relationships, read_vocab)
from pipeline.readers.vqa import majority_answer, read_vqa

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def vqa_files(tmp_path: Path, answers=None, subtype="train2014"):
    answers = answers or ["net"] * 7 + ["Net", "nets", "net."]
    q = write(tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": subtype,
        "questions": [{"image_id": 458752, "question": "What is this photo taken looking through?",
                       "question_id": 458752000},
                      {"image_id": 458752, "question": "How many players?", "question_id": 458752001}]})
    a = write(tmp_path / f"v2_mscoco_{subtype}_annotations.json", {
        "info": {}, "license": {}, "data_type": "mscoco", "data_subtype": subtype,
        "annotations": [
            {"question_type": "what is this", "multiple_choice_answer": "net", "image_id": 458752,
             "answer_type": "other", "question_id": 458752000,
             "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(answers)]},
            {"question_type": "how many", "multiple_choice_answer": "2", "image_id": 458752,
             "answer_type": "number", "question_id": 458752001,
             "answers": [{"answer": x, "answer_confidence": "maybe", "answer_id": i + 1}
                         for i, x in enumerate(["2", "two", "Two", "2", "3", "3", "2", "2", "1", "three"])]}]})
    return q, a


# --- image ids ---
def test_image_id_rule():
    assert coco_image_id(42, "train2014") == "COCO_train2014_000000000042"
    assert parse_coco_image_id("COCO_val2014_000000000042") == ("val2014", 42)
    assert image_id_from_path("/x/images/2375429.jpg") == "2375429"
    assert nlvr2_image_ids("dev-850-2-0") == ("dev-850-2-img0", "dev-850-2-img1")
    assert nlvr2_group("dev-850-2-0") == "dev-850--0"
    with pytest.raises(PipelineError, match="not split-set-pair-sentence"):
        nlvr2_image_ids("dev-850-0")


# --- answers ---
@pytest.mark.parametrize("raw, expected", [
    ("The man.", "man"), ("a woman", "woman"), ("Two", "2"), ("grey", "gray"), ("An apple", "apple"),
    ("yes", "yes"), ("", "")])
def test_convert_ans(raw, expected):
    assert convert_ans(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Two dogs!", "2 dogs"), ("1,000", "1000"), ("x-y, z", "x y z"), ("Im", "im"), ("dont", "don't"),
    ("the cat.", "cat"), ("yes!", "yes"), ("none", "0"), ("3.5", "3.5"), ("a an the", "")])
def test_normalize_vqa_answer_follows_official_rules(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_soft_scores():
    assert [vqa_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert soft_scores(["2", "two", "Two", "2.", "3"]) == {"2": 1.0, "3": 0.3}
    assert soft_scores(["2", "two", "Two", "2.", "3"], normalize=False) == {"2": 0.3, "two": 0.3, "Two": 0.3,
                                                                         "2.": 0.3, "3": 0.3}


def test_answer_vocab_rules_and_roundtrip(tmp_path):
    q, a = vqa_files(tmp_path)
    qs = read_vqa(q, a)
    assert AnswerVocab.for_vqa(qs, min_count=1).answers == ["2", "net"]
    assert len(AnswerVocab.for_vqa(qs * 4, min_count=9)) == 0
    assert AnswerVocab.for_vqa(qs * 9, min_count=9).answers == ["2", "net"]
    vocab = AnswerVocab(["yes", "no", "2"])
    vocab.save(tmp_path / "ans.json")
    assert AnswerVocab.load(tmp_path / "ans.json").answers == ["yes", "no", "2"]
    write(tmp_path / "ans2label.json", {"no": 1, "yes": 0})
    assert AnswerVocab.load(tmp_path / "ans2label.json").answers == ["yes", "no"]
    write(tmp_path / "all_ans.json", [{"ans": "yes", "dsets": ["vqa"]}, {"ans": "man", "dsets": ["gqa"]}])
    assert AnswerVocab.load(tmp_path / "all_ans.json").answers == ["yes", "man"]
    assert vocab.target({"2": 1.0, "unknown": 0.3}) == {2: 1.0}
    assert AnswerVocab.union(vocab, AnswerVocab(["no", "red"])).answers == ["yes", "no", "2", "red"]
    write(tmp_path / "dup.json", ["yes", "yes"])
    with pytest.raises(PipelineError, match="duplicate"):
        AnswerVocab.load(tmp_path / "dup.json")


# --- VQA ---
def test_read_vqa_real_format(tmp_path):
    q, a = vqa_files(tmp_path)
    qs = read_vqa(q, a)
    assert [x.question_id for x in qs] == [458752000, 458752001]
    assert qs[0].image_id == "COCO_train2014_000000458752"
    assert qs[0].answers[:1] == ("net",) and len(qs[0].answers) == 10
    assert qs[0].scores == {"net": 1.0, "nets": 0.3}
    assert qs[1].scores == {"2": 1.0, "3": 0.9, "1": 0.3}
    assert qs[1].answer_type == "number" and qs[1].question_type == "how many"
    assert majority_answer(qs[1]) == "2"
    test_only = read_vqa(q)
    assert test_only[0].answers == () and test_only[0].scores == {}


def test_read_vqa_test_dev_images_are_test2015(tmp_path):
    q = write(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "test-dev2015",
        "questions": [{"image_id": 1, "question": "Why?", "question_id": 1000}]})
    assert read_vqa(q)[0].image_id == "COCO_test2015_000000000001"


def test_read_vqa_wrong_answer_count_names_key_path(tmp_path):
    q, a = vqa_files(tmp_path, answers=["net"] * 9)
    with pytest.raises(PipelineError) as err:
        read_vqa(q, a)
    assert str(a) in str(err.value)
    assert "annotations[0].answers: expected 10 items, got 9" in str(err.value)


def test_read_vqa_missing_key_and_bad_answer_type(tmp_path):
    q, a = vqa_files(tmp_path)
    data = json.loads(a.read_text())
    del data["annotations"][1]["answer_type"]
    write(a, data)
    with pytest.raises(PipelineError, match=r"annotations\[1\]\.answer_type: missing key"):
        read_vqa(q, a)
    data["annotations"][1]["answer_type"] = "colour"
    write(a, data)
    with pytest.raises(PipelineError, match=r"annotations\[1\]\.answer_type: expected one of"):
        read_vqa(q, a)


def test_read_vqa_unannotated_question_is_an_error(tmp_path):
    q, a = vqa_files(tmp_path)
    data = json.loads(a.read_text())
    data["annotations"].pop()
    write(a, data)
    with pytest.raises(PipelineError, match="1 of 2 questions .* have no annotation"):
        read_vqa(q, a)


def test_invalid_json_names_file_and_position(tmp_path):
    q, bad = vqa_files(tmp_path)
    bad.write_text('{"annotations": [1, 2,]}')
    with pytest.raises(PipelineError) as err:
        read_vqa(q, bad)
    assert str(bad) in str(err.value) and "invalid JSON at line 1" in str(err.value)
    with pytest.raises(PipelineError, match="file not found"):
        read_vqa(tmp_path / "nope.json")


# --- COCO ---
def test_read_coco_captions(tmp_path):
    path = write(tmp_path / "captions_val2014.json", {
        "info": {}, "licenses": [], "images": [
            {"license": 3, "file_name": "COCO_val2014_000000391895.jpg", "coco_url": "", "height": 360,
             "width": 640, "date_captured": "", "flickr_url": "", "id": 391895}],
        "annotations": [
            {"image_id": 391895, "id": 37, "caption": "A man with a red helmet on a small moped on a dirt road. "},
            {"image_id": 522418, "id": 38, "caption": "A woman wearing a net on her head."}]})
    caps = read_captions(path)
    assert caps[0].image_id == "COCO_val2014_000000391895" and caps[0].text.endswith("dirt road.")
    # an image missing from images[] falls back to the name rule with the split of the file name
    assert caps[1].image_id == "COCO_val2014_000000522418" and caps[1].source == "mscoco"
    coco = load_coco(path)
    assert len(coco.getAnnIds(imgIds=[391895])) == 1
    data = json.loads(path.read_text())
    del data["annotations"][1]["caption"]
    write(path, data)
    with pytest.raises(PipelineError, match=r"annotations\[1\]\.caption: missing key"):
        read_captions(path)


# --- Visual Genome ---
def test_read_visual_genome_files(tmp_path):
    obj = {"object_id": 1058498, "x": 421, "y": 91, "w": 79, "h": 339, "names": ["clock"], "synsets": ["clock.n.01"]}
    other = {"object_id": 5046, "x": 77, "y": 328, "w": 714, "h": 262, "names": ["Street"], "synsets": []}
    write(tmp_path / "image_data.json", [{"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg",
                                          "height": 600, "image_id": 1, "coco_id": None, "flickr_id": None}])
    write(tmp_path / "objects.json", [{"image_id": 1, "objects": [obj, other], "image_url": ""}])
    write(tmp_path / "attributes.json", [{"image_id": 1, "attributes": [dict(obj, attributes=["green", "tall"])]}])
    write(tmp_path / "relationships.json", [{"image_id": 1, "relationships": [
        {"relationship_id": 15927, "predicate": "ON", "synsets": ["along.r.01"], "subject": obj, "object": other}]}])
    write(tmp_path / "region_descriptions.json", [{"id": 1, "regions": [
        {"region_id": 1382, "width": 82, "height": 139, "image_id": 1, "phrase": "the clock is green in colour",
         "y": 57, "x": 421}]}])
    write(tmp_path / "question_answers.json", [{"id": 1, "qas": [
        {"a_objects": [], "question": "What color is the clock?", "image_id": 1, "qa_id": 986768,
         "answer": "Green.", "q_objects": []}]}])
    assert read_image_data(tmp_path / "image_data.json")[0].image_id == "1"
    images = read_objects(tmp_path / "objects.json", tmp_path / "attributes.json")
    clock, street = images[0].objects
    assert clock.names == ("clock",) and clock.attributes == ("green", "tall") and clock.xyxy == (421, 91, 500, 430)
    assert street.names == ("street",) and street.attributes == ()
    rel = read_relationships(tmp_path / "relationships.json")[0]
    assert (rel.predicate, rel.subject_id, rel.object_id) == ("on", 1058498, 5046)
    region = read_region_descriptions(tmp_path / "region_descriptions.json")[0]
    assert region.image_id == "1" and region.source == "vg" and region.box == (421, 57, 82, 139)
    qa = read_question_answers(tmp_path / "question_answers.json")[0]
    assert (qa.image_id, qa.answer, convert_ans(qa.answer)) == ("1", "Green.", "green")
    write(tmp_path / "objects.json", [{"image_id": 1, "objects": [dict(obj, x="421")]}])
    with pytest.raises(PipelineError, match=r"\[0\]\.objects\[0\]\.x: expected an integer or a number, got str"):
        read_objects(tmp_path / "objects.json")


def test_read_real_detector_vocab():
    objects = read_vocab(REPO / "detector" / "vocab" / "objects_vocab.txt")
    attributes = read_vocab(REPO / "detector" / "vocab" / "attributes_vocab.txt")
    assert len(objects) == 1600 and len(attributes) == 400
    assert ["gray", "grey"] in attributes


# --- GQA ---
def test_read_gqa_files(tmp_path):
    q = write(tmp_path / "testdev_all_questions.json", {
        "07333408": {"semantic": [{"operation": "select", "argument": "pipe (1)", "dependencies": []},
                                  {"operation": "query", "argument": "material", "dependencies": [0]}],
                     "entailed": ["07333409"], "equivalent": ["07333408"],
                     "question": "What is the pipe made of?", "imageId": "2375429", "isBalanced": True,
                     "groups": {"global": "material", "local": "10q-pipe_material"}, "answer": "metal",
                     "semanticStr": "select: pipe (1)->query: material [0]", "annotations": {},
                     "types": {"structural": "query", "semantic": "attr", "detailed": "materialAttr"},
                     "fullAnswer": "The pipe is made of metal."},
        "07333409": {"question": "Is the pipe made of metal?", "imageId": "n161313", "isBalanced": False,
                     "answer": "yes", "types": {"structural": "verify"}, "groups": {"global": None, "local": "x"}}})
    qs = {x.question_id: x for x in read_gqa_questions(q)}
    assert qs["07333408"].image_id == "2375429" and qs["07333408"].entailed == ("07333409",)
    assert qs["07333409"].groups["global"] is None and not qs["07333409"].is_balanced
    c = write(tmp_path / "testdev_choices.json", {"07333408": {"valid": ["metal", "wood"], "plausible": ["metal"]}})
    assert read_choices(c)["07333408"].valid == ("metal", "wood")
    g = write(tmp_path / "testdev_sceneGraphs.json", {"2375429": {"width": 500, "height": 333, "objects": {
        "1": {"name": "pipe", "x": 1, "y": 2, "w": 3, "h": 4, "attributes": ["metal"],
              "relations": [{"name": "to the left of", "object": "2"}]}}}})
    graph = read_scene_graphs(g)["2375429"]
    assert graph.objects["1"].relations == (("to the left of", "2"),)
    write(c, {"07333408": {"valid": "metal", "plausible": []}})
    with pytest.raises(PipelineError, match=r"07333408\.valid: expected a list"):
        read_choices(c)


# --- NLVR2 ---
def test_read_nlvr2_jsonl(tmp_path):
    path = tmp_path / "dev.json"
    rows = [{"validation": {}, "sentence": "One image shows exactly two brown acorns.", "left_url": "http://x/a.jpg",
             "writer": "103", "label": "False", "right_url": "http://x/b.jpg", "synset": "acorn",
             "query": "acorn", "identifier": "dev-850-2-0", "extra_validations": {}},
            {"sentence": "x", "label": "True", "identifier": "dev-850-3-0"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ex = read_nlvr2(path)
    assert ex[0].label is False and ex[1].label is True
    assert (ex[0].left_image_id, ex[0].right_image_id) == ("dev-850-2-img0", "dev-850-2-img1")
    path.write_text(json.dumps(dict(rows[1], label="maybe")) + "\n")
    with pytest.raises(PipelineError, match=r"line 1\.label: expected \"True\" or \"False\""):
        read_nlvr2(path)
    path.write_text('{"identifier": "dev-1-0-0",\n')
    with pytest.raises(PipelineError, match="line 1: invalid JSON"):
        read_nlvr2(path)


# --- LXMERT json ---
def test_read_lxmert_pretrain_json(tmp_path):
    path = write(tmp_path / "mscoco_train.json", [{
        "img_id": "COCO_train2014_000000318556",
        "sentf": {"mscoco": ["a kitchen"] * 5, "vqa": ["Is the sink full of water?", "What color?"]},
        "labelf": {"vqa": [{"no": 1}, {"blue": 1, "blue and white": 0.3}]}}])
    entry = read_pretrain_json(path)[0]
    assert entry.image_id == "COCO_train2014_000000318556" and len(entry.sentf["mscoco"]) == 5
    assert entry.labelf["vqa"][1] == {"blue": 1.0, "blue and white": 0.3}
    assert AnswerVocab.for_pretraining([entry]).answers == ["blue", "blue and white", "no"]
    data = json.loads(path.read_text())
    data[0]["labelf"]["vqa"].pop()
    write(path, data)
    with pytest.raises(PipelineError, match=r"\[0\]\.labelf\.vqa: expected 2 items, got 1"):
        read_pretrain_json(path)


def test_read_lxmert_task_json_roundtrip(tmp_path):
    vqa = write(tmp_path / "vqa.json", [{"answer_type": "other", "img_id": "COCO_train2014_000000458752",
                                         "label": {"net": 1}, "question_id": 458752000,
                                         "question_type": "what is this", "sent": "What is this?"}])
    gqa = write(tmp_path / "gqa.json", [{"img_id": "2375429", "label": {"pipe": 1.0}, "question_id": "07333408",
                                         "sent": "What is under the faucet?"}, {"img_id": "1", "question_id": "2",
                                                                                 "sent": "test?"}])
    nlvr = write(tmp_path / "nlvr2.json", [{"identifier": "train-10171-0-0", "img0": "train-10171-0-img0",
                                            "img1": "train-10171-0-img1", "label": 0, "sent": "s",
                                            "uid": "nlvr2_train_0"}])
    v = read_task_json(vqa)[0]
    assert v.label == {"net": 1.0} and v.question_id == 458752000 and v.image_id.startswith("COCO_")
    g = read_task_json(gqa)
    assert g[0].question_id == "07333408" and g[1].label is None
    n = read_task_json(nlvr)[0]
    assert (n.left_image_id, n.label) == ("train-10171-0-img0", 0)
    for src, records in ((vqa, [v]), (gqa, g), (nlvr, [n])):
        write_task_json(tmp_path / "again.json", records)
        assert read_task_json(tmp_path / "again.json") == records
    write(nlvr, [{"identifier": "a-1-0-0", "img0": "x", "img1": "y", "label": 2, "sent": "s"}])
    with pytest.raises(PipelineError, match=r"\[0\]\.label: expected 0 or 1"):
        read_task_json(nlvr)


# --- DataRoot and data info ---
def test_data_root_paths_and_missing(tmp_path):
    root = DataRoot(tmp_path)
    q, a = vqa_files(tmp_path / "vqa")
    assert root.vqa_questions("train2014") == q and root.vqa_annotations("train2014") == a
    missing = {str(f.path.relative_to(tmp_path)) for f in root.missing()}
    assert "vqa/v2_mscoco_train2014_annotations.json" not in missing
    assert "gqa/testdev_balanced_questions.json" in missing and "nlvr2/test1.json" in missing
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "COCO_train2014_000000458752.jpg").write_bytes(b"x")
    assert root.image_path("COCO_train2014_000000458752").name == "COCO_train2014_000000458752.jpg"
    with pytest.raises(PipelineError, match="no image file"):
        root.image_path("42")


def test_data_info_command_reports_counts_and_missing(tmp_path, capsys):
    from workflows.cli import main

    vqa_files(tmp_path / "vqa")
    assert main(["data", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vqa/train2014" in out and "questions 2" in out
    assert "gqa/train" in out and "not found" in out
    assert "expected file(s) missing" in out
    (tmp_path / "vqa" / "v2_mscoco_train2014_annotations.json").write_text("[")
    assert main(["data", "info", str(tmp_path)]) == 1
    assert "v2_mscoco_train2014_annotations.json: invalid JSON" in capsys.readouterr().err


def test_gqa_questions_from_a_folder_of_chunks(tmp_path):
    folder = tmp_path / "gqa" / "train_all_questions"
    for i, qid in enumerate(["001", "002", "003"]):
        write(folder / f"train_all_questions_{i}.json",
              {qid: {"question": f"q{qid}?", "imageId": "1", "answer": "yes", "isBalanced": False}})
    root = DataRoot(tmp_path)
    qs = read_gqa_questions(root.gqa_questions("train", balanced=False))
    assert [q.question_id for q in qs] == ["001", "002", "003"]
    missing = {f.path.name for f in root.missing()}
    assert "train_all_questions.json" not in missing and "train_balanced_questions.json" in missing
    write(folder / "train_all_questions_3.json", {"002": {"question": "again?", "imageId": "1"}})
    with pytest.raises(PipelineError, match="002: also in an earlier chunk"):
        read_gqa_questions(root.gqa_questions("train", balanced=False))


def test_task_json_round_trip_without_optional_fields(tmp_path):
    from pipeline.readers.records import NLVR2TaskExample

    unlabelled = [NLVR2TaskExample(identifier="test1-0-0-0", sent="Two stars.", left_image_id="test1-0-0-img0",
                                   right_image_id="test1-0-0-img1")]
    write_task_json(tmp_path / "test.json", unlabelled)
    assert read_task_json(tmp_path / "test.json") == unlabelled
