"""The official VQA v2 accuracy (GT-Vision-Lab/VQA `vqaEval.py`), as a pure function.

Two behaviours of the official script exist (docs/reference/evaluation.md §2.5-§2.6):

* "2021" (current HEAD a013f00, the default): ground-truth answers and the prediction
  are cleaned of newlines/tabs; only when the cleaned ground truth is *not* unanimous are
  both normalised (punctuation, number words, articles, contractions). Unanimous ground
  truth is compared raw and case-sensitively, by design (OCR answers).
* "2017" (a4f1afd, public 2016-2021): the prediction is always cleaned and normalised;
  non-unanimous ground truth gets only `processPunctuation`, nothing else.

Per question the accuracy is the mean over the leave-one-out subsets of the annotators:
for each annotator i, min(1, #(other annotators whose answer equals the prediction) / 3).
Leave-one-out goes by *index*; the official removes by dict inequality, which is the same
thing for real annotations (each carries a distinct `answer_id`).

Aggregates are `round(100 * mean, precision)` over the *unrounded* per-question values,
summed in annotation-file order as the official does, so the float result is identical.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from pipeline.errors import PipelineError
from pipeline.evaluation.vqa_normalization import clean_whitespace, normalize_answer, process_punctuation

VERSIONS = ("2021", "2017")
ANSWER_TYPES = ("yes/no", "number", "other")


def question_accuracy(gt_answers: Sequence[str], prediction: str, version: str = "2021") -> float:
    """Unrounded accuracy in [0, 1] of one prediction against the raw annotator answers."""
    if version == "2021":
        gts = [clean_whitespace(a) for a in gt_answers]
        pred = clean_whitespace(prediction)
        if len(set(gts)) > 1:
            gts = [normalize_answer(a) for a in gts]
            pred = normalize_answer(pred)
    elif version == "2017":
        pred = normalize_answer(clean_whitespace(prediction))
        gts = list(gt_answers)
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
    else:
        raise ValueError(f"unknown VQA evaluation version {version!r}; choose from {VERSIONS}")
    matches = [a == pred for a in gts]
    total = sum(matches)
    # Leave annotator i out: the others that match are total - matches[i].
    per_subset = [min(1, float(total - m) / 3) for m in matches]
    return float(sum(per_subset)) / len(per_subset)


def _annotation_list(annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list:
    if isinstance(annotations, Mapping):
        if "annotations" not in annotations:
            raise PipelineError("VQA annotation file has no 'annotations' list")
        annotations = annotations["annotations"]
    return list(annotations)


def vqa_metrics(annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                predictions: Mapping[int, str], *, version: str = "2021",
                precision: int = 2) -> dict[str, Any]:
    """The official accuracies, as percentages rounded to `precision` decimals.

    `annotations` is the annotation file as loaded from json (or its "annotations" list);
    `predictions` maps question_id -> answer string. A question without a prediction
    scores 0 (the official script refuses such a file; the caller decides whether to).
    Returns `overall`, `yes/no`, `number`, `other` (None when the split has no question
    of that answer type), `per_question_type`, `per_answer_type` (every type present),
    `questions` and `missing_predictions`.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown VQA evaluation version {version!r}; choose from {VERSIONS}")
    per_question: list[float] = []
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    missing = 0
    for ann, acc in _scored(annotations, predictions, version):
        qtype, atype = ann["question_type"], ann["answer_type"]
        missing += predictions.get(ann["question_id"]) is None
        per_question.append(acc)
        by_question_type.setdefault(qtype, []).append(acc)
        by_answer_type.setdefault(atype, []).append(acc)

    def pct(values: list[float]) -> float:
        return round(100 * float(sum(values)) / len(values), precision)

    per_answer_type = {t: pct(v) for t, v in by_answer_type.items()}
    result: dict[str, Any] = {"overall": pct(per_question)}
    for t in ANSWER_TYPES:
        result[t] = per_answer_type.get(t)
    result["per_question_type"] = {t: pct(v) for t, v in sorted(by_question_type.items())}
    result["per_answer_type"] = dict(sorted(per_answer_type.items()))
    result["questions"] = len(per_question)
    result["missing_predictions"] = missing
    return result


def _scored(annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]], predictions: Mapping[int, str],
            version: str) -> Iterator[tuple[Mapping[str, Any], float]]:
    """(annotation, accuracy in [0, 1]) per question; 0 for a question without a prediction."""
    anns = _annotation_list(annotations)
    if not anns:
        raise PipelineError("VQA annotation file has no questions")
    for ann in anns:
        try:
            qid = ann["question_id"]
            gt = [a["answer"] for a in ann["answers"]]
            ann["question_type"], ann["answer_type"]
        except (KeyError, TypeError) as err:
            raise PipelineError(f"VQA annotation {ann.get('question_id', '?') if isinstance(ann, Mapping) else ann!r} "
                                f"lacks field {err}") from None
        if not gt:
            raise PipelineError(f"VQA annotation for question {qid} has no answers")
        pred = predictions.get(qid)
        yield ann, (0.0 if pred is None else question_accuracy(gt, pred, version))


def question_scores(annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]], predictions: Mapping[int, str],
                    version: str = "2021") -> dict[int, float]:
    """question_id -> accuracy in [0, 1]: the numbers `overall` averages."""
    return {ann["question_id"]: acc for ann, acc in _scored(annotations, predictions, version)}


def vqa_question_ids(annotations: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[int]:
    return [ann["question_id"] for ann in _annotation_list(annotations)]

