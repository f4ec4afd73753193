"""VQA v2: `v2_OpenEnded_mscoco_<split>_questions.json` + `v2_mscoco_<split>_annotations.json`."""

from __future__ import annotations

import logging
import os
import re

from pipeline.readers.answers import normalize_vqa_answer, soft_scores
from pipeline.readers.image_ids import coco_image_id
from pipeline.readers.records import VQAQuestion
from pipeline.readers.strict_json import Where, load_json

log = logging.getLogger(__name__)

ANSWERS_PER_QUESTION = 10
ANSWER_TYPES = ("yes/no", "number", "other")


def _image_subtype(where: Where, data: dict) -> str:
    subtype = data.get("data_subtype")
    if not isinstance(subtype, str):
        match = re.search(r"(train|val|test-dev|test)(\d{4})", where.file.name)
        if not match:
            raise where["data_subtype"].error("missing key (and the file name names no split)")
        subtype = match.group(0)
    # test-dev questions are about test2015 images
    return "test2015" if subtype.startswith("test-dev") else subtype


def read_vqa(questions_path: str | os.PathLike,
             annotations_path: str | os.PathLike | None = None) -> list[VQAQuestion]:
    """Questions with their 10 answers and soft scores (keys normalised, see `answers.py`).

    Without an annotation file (test splits) the answers are empty. Every question must have
    an annotation when one is given; an annotation for an unknown question is an error too.
    """
    qwhere = Where(questions_path)
    qdata = qwhere.check(load_json(questions_path), dict)
    subtype = _image_subtype(qwhere, qdata)
    questions = []
    for w, q in qwhere["questions"].items(qwhere.get(qdata, "questions", list)):
        questions.append((w.get(q, "question_id", int), w.get(q, "image_id", int), w.get(q, "question", str)))

    anns: dict[int, dict] = {}
    if annotations_path is not None:
        awhere = Where(annotations_path)
        adata = awhere.check(load_json(annotations_path), dict)
        for w, a in awhere["annotations"].items(awhere.get(adata, "annotations", list)):
            qid = w.get(a, "question_id", int)
            answers = [wa.get(ans, "answer", str)
                       for wa, ans in w["answers"].items(w.get(a, "answers", list), ANSWERS_PER_QUESTION)]
            answer_type = w.get(a, "answer_type", str)
            if answer_type not in ANSWER_TYPES:
                raise w["answer_type"].error(f"expected one of {', '.join(ANSWER_TYPES)}, got {answer_type!r}")
            anns[qid] = {"answers": tuple(answers), "answer_type": answer_type,
                         "question_type": w.get(a, "question_type", str),
                         "image_id": w.get(a, "image_id", int),
                         "multiple_choice_answer": w.get(a, "multiple_choice_answer", str), "where": w}
        qids = {qid for qid, _, _ in questions}
        missing = [qid for qid in qids if qid not in anns]
        extra = [qid for qid in anns if qid not in qids]
        if missing:
            raise awhere.error(f"{len(missing)} of {len(qids)} questions of {questions_path} have no annotation "
                               f"(first: question_id {sorted(missing)[0]})")
        if extra:
            raise awhere.error(f"{len(extra)} annotations have no question in {questions_path} "
                               f"(first: question_id {sorted(extra)[0]})")

    out = []
    for qid, image, text in questions:
        ann = anns.get(qid)
        if ann is None:
            out.append(VQAQuestion(question_id=qid, image_id=coco_image_id(image, subtype), question=text))
            continue
        if ann["image_id"] != image:
            raise ann["where"]["image_id"].error(f"{ann['image_id']} but the question's image_id is {image}")
        out.append(VQAQuestion(question_id=qid, image_id=coco_image_id(image, subtype), question=text,
                               answers=ann["answers"], answer_type=ann["answer_type"],
                               question_type=ann["question_type"],
                               multiple_choice_answer=ann["multiple_choice_answer"],
                               scores=soft_scores(ann["answers"])))
    return out


def majority_answer(question: VQAQuestion) -> str | None:
    """The highest-scoring normalised answer (ties: the multiple-choice answer, then alphabetical)."""
    if not question.scores:
        return None
    mc = normalize_vqa_answer(question.multiple_choice_answer or "")
    return max(question.scores, key=lambda a: (question.scores[a], a == mc, [-ord(c) for c in a]))
