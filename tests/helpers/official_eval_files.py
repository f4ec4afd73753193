"""Small gold files in the official VQA v2, GQA and NLVR2 formats, with predictions whose
metrics are worked out by hand in test_eval_vqa.py, test_eval_gqa.py and test_eval_nlvr2.py,
and a data root that holds them laid out as the datasets ship."""

from __future__ import annotations

import json
from pathlib import Path


# ---------------------------------------------------------------- VQA v2
def vqa_annotation(qid, answers, atype, qtype):
    """One entry of v2_mscoco_*_annotations.json."""
    return {"question_id": qid, "image_id": 1, "question_type": qtype, "answer_type": atype,
            "multiple_choice_answer": answers[0] if answers else "",
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


VQA_ANNOTATIONS = {"annotations": [
    vqa_annotation(1, ["yes"] * 10, "yes/no", "is the"),                       # pred "yes": 1.0
    vqa_annotation(2, ["3"] + ["4"] * 9, "number", "how many"),                # pred "three": k=1 -> 0.3
    vqa_annotation(3, ["red"] * 10, "other", "what color"),                    # pred "blue": 0.0
    vqa_annotation(4, ["white"] * 2 + ["gray"] * 8, "other", "what color"),    # pred "White": k=2 -> 0.6
]}
VQA_PREDICTIONS = {1: "yes", 2: "three", 3: "blue", 4: "White"}


# ---------------------------------------------------------------- GQA
def _gqa_question(text, answer, structural, semantic, ops, *, balanced=True, group=None, entailed=(),
                  detailed="x"):
    return {"question": text, "answer": answer, "isBalanced": balanced, "imageId": "1",
            "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
            "groups": {"global": group, "local": None}, "entailed": list(entailed),
            "semantic": [{"operation": o, "argument": a, "dependencies": []} for o, a in ops]}


# Question ids are strings with leading zeros, as in GQA.
GQA_QUESTIONS = {
    "01": _gqa_question("What color is the car?", "red", "query", "attr", [("select", "car"), ("query", "color")],
                        group="color", entailed=["05", "01"]),                       # entails itself: excluded
    "02": _gqa_question("Is the car red?", "yes", "verify", "rel", [("select", "car"), ("verify color", "red")]),
    "03": _gqa_question("Is the car red or blue?", "red", "choose", "attr",
                        [("select", "car"), ("exist", "?"), ("choose color", "red|blue")], group="color",
                        entailed=["02"]),
    "04": _gqa_question("What is on the table?", "cup", "query", "obj",
                        [("select", "table"), ("relate", "_,on,s"), ("query", "name")], group="object"),
    "05": _gqa_question("Is the car blue?", "no", "verify", "attr", [("select", "car"), ("verify color", "blue")],
                        balanced=False),
    "06": _gqa_question("What do the car and the bus have in common?", "color", "compare", "attr",
                        [("select", "car"), ("select", "bus"), ("common", "")], detailed="twoCommon"),
    "07": _gqa_question("What color is the bus?", "blue", "query", "attr", [("select", "bus"), ("query", "color")],
                        group="color"),
}
GQA_CHOICES = {
    "01": {"valid": ["red", "blue", "green"], "plausible": ["red", "blue"]},
    "02": {"valid": ["yes", "no"], "plausible": ["yes"]},
    "03": {"valid": ["red", "blue"], "plausible": ["red", "blue"]},
    "04": {"valid": ["cup", "plate", "table"], "plausible": ["cup", "plate"]},
    "05": {"valid": ["yes", "no"], "plausible": ["yes", "no"]},
    "06": {"valid": ["color"], "plausible": ["color"]},
    "07": {"valid": ["red", "blue"], "plausible": ["red", "blue"]},
}
# right: 01, 03, 05 (unbalanced); wrong: 02, 04 ("banana" is neither valid nor plausible),
# 06 ("material": wrong, but a "Common" question accepts color/material/shape), 07.
GQA_PREDICTIONS = {"01": "red", "02": "no", "03": "red", "04": "banana", "05": "no", "06": "material", "07": "red"}


# ---------------------------------------------------------------- NLVR2
NLVR2_EXAMPLES = [
    {"identifier": "dev-1-0-0", "sentence": "Two dogs.", "label": "True"},
    {"identifier": "dev-1-1-0", "sentence": "Two dogs.", "label": "False"},
    {"identifier": "dev-1-2-0", "sentence": "Two dogs.", "label": "True"},
    {"identifier": "dev-1-0-1", "sentence": "A cat.", "label": "False"},
    {"identifier": "dev-2-0-0", "sentence": "Two dogs.", "label": "True"},   # same text, another set
]


def write_data_root(root: Path) -> Path:
    """`root` with the files above under the names and folders the datasets ship them in:
    VQA val2014 (annotated) and test2015 (questions only), GQA val (all + balanced + choices)
    and testdev (balanced only), NLVR2 dev."""
    vqa, gqa, nlvr2 = root / "vqa", root / "gqa", root / "nlvr2"
    for folder in (vqa, gqa, nlvr2):
        folder.mkdir(parents=True)
    (vqa / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"info": {}, **VQA_ANNOTATIONS}))
    (vqa / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": []}))
    (vqa / "v2_OpenEnded_mscoco_test2015_questions.json").write_text(json.dumps({"questions": []}))
    (vqa / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(VQA_ANNOTATIONS))
    (gqa / "val_all_questions.json").write_text(json.dumps(GQA_QUESTIONS))
    balanced = {k: v for k, v in GQA_QUESTIONS.items() if v["isBalanced"]}
    (gqa / "val_balanced_questions.json").write_text(json.dumps(balanced))
    (gqa / "val_choices.json").write_text(json.dumps(GQA_CHOICES))
    (gqa / "testdev_balanced_questions.json").write_text(json.dumps(balanced))
    (nlvr2 / "dev.json").write_text("".join(json.dumps(e) + "\n" for e in NLVR2_EXAMPLES))
    return root
