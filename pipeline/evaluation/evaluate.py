"""The `evaluate` stage: score predictions for one split with the official metrics.

`evaluate_predictions` works on any model's predictions (id -> answer, as read from an
official submission file or returned by a fine-tuned run's predictor); `write_evaluation`
publishes `results.json` and the submission file in the official format.

Missing predictions: the official scripts refuse a file that lacks any question (VQA
asserts the id sets are equal, GQA raises, NLVR2 prints the missing ids and stops). By
default this scores the split anyway, counting every question without a prediction as
answered wrongly over the full denominator (the number the official script would print
had those questions been answered wrongly: a lower bound), and says how many there were;
`strict=True` refuses instead, as the official scripts do. A submission file is written
only when it covers every question the split requires.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping

from pipeline.atomic import write_json
from pipeline.errors import PipelineError
from pipeline.evaluation import gqa, nlvr2, submission, vqa
from pipeline.evaluation.split_files import SplitFiles, load_json, load_json_lines, locate

MISSING_POLICY_SCORED = "scored as wrong answers (the official script refuses such a file; --strict refuses too)"


@dataclass
class Evaluation:
    task: str
    split: str
    files: SplitFiles
    metrics: dict[str, Any]
    answers: Mapping[Hashable, str]
    required_ids: list            # every id a complete submission must answer, in gold-file order
    submission_ids: list          # the ids written to the submission, in gold-file order
    missing_ids: list
    unknown_ids: list
    duplicates: int = 0
    evaluator: str = ""
    notes: list[str] = field(default_factory=list)


def submission_name(task: str, split: str) -> str:
    return {"vqa": f"v2_OpenEnded_mscoco_{split}_results.json",
            "gqa": f"{split}_predictions.json",
            "nlvr2": f"{split}_predictions.csv"}[task]


def read_predictions(task: str, path: str | os.PathLike) -> submission.Predictions:
    reader = {"vqa": submission.read_vqa_predictions, "gqa": submission.read_gqa_predictions,
              "nlvr2": submission.read_nlvr2_predictions}[task]
    return reader(path)


def _describe(ids: list, limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def evaluate_predictions(task: str, answers: Mapping[Hashable, str], data: str | os.PathLike, split: str, *,
                         strict: bool = False, vqa_version: str = "2021", duplicates: int = 0,
                         source: str | None = None) -> Evaluation:
    files = locate(data, task, split)
    where = source or "the predictions"
    if task == "vqa":
        gold = load_json(files.gold)
        anns = gold.get("annotations") if isinstance(gold, dict) else None
        if not isinstance(anns, list):
            raise PipelineError("not a VQA annotation file (no 'annotations' list)", files.gold)
        required = [a.get("question_id") if isinstance(a, dict) else None for a in anns]
        known = set(required)
        submission_ids = required
        evaluator = f"GT-Vision-Lab/VQA vqaEval.py ({vqa_version} behaviour)"
    elif task == "gqa":
        questions = load_json(files.gold)
        if not isinstance(questions, dict):
            raise PipelineError("not a GQA questions file (expected an object questionId -> question)", files.gold)
        required = [q for q, v in questions.items() if isinstance(v, dict) and v.get("isBalanced")]
        known = questions.keys()
        # Every prediction for a question of the file goes into the submission (entailed,
        # unbalanced ones feed consistency); the balanced ones are required.
        submission_ids = [q for q in questions if q in answers]
        evaluator = "GQA eval.py v1.1"
    else:
        examples = load_json_lines(files.gold)
        required = [e.get("identifier") if isinstance(e, dict) else None for e in examples]
        known = set(required)
        submission_ids = required
        evaluator = "lil-lab/nlvr nlvr2/eval/metrics.py"

    missing = [i for i in required if i not in answers]
    unknown = [i for i in answers if i not in known]
    if strict and missing:
        raise PipelineError(f"{len(missing)} of the {len(required)} {task} {split} questions have no prediction "
                            f"(first: {_describe(missing)}); --strict refuses to score, as the official script does",
                            source)
    if strict and unknown and task == "vqa":
        raise PipelineError(f"{len(unknown)} predictions are for questions not in {files.gold.name} "
                            f"(first: {_describe(unknown)}); the official script requires the same question set",
                            source)

    if task == "vqa":
        metrics = vqa.vqa_metrics(anns, answers, version=vqa_version)
    elif task == "gqa":
        metrics = gqa.gqa_metrics(questions, answers, load_json(files.choices) if files.choices else None,
                                  split=split)
    else:
        metrics = nlvr2.nlvr2_metrics(examples, answers)

    notes = []
    if missing:
        notes.append(f"{len(missing)} of {len(required)} questions have no prediction in {where} "
                     f"(first: {_describe(missing)}); {MISSING_POLICY_SCORED}")
    if unknown:
        notes.append(f"{len(unknown)} predictions are for ids not in {files.gold.name} and were ignored "
                     f"(first: {_describe(unknown)})")
    if duplicates:
        notes.append(f"{duplicates} predictions repeat an earlier id; the last one counts, as in the official script")
    if task == "gqa" and files.balanced_only:
        notes.append(f"no {split}_all_questions.json: scored on the balanced questions only")
    return Evaluation(task, split, files, metrics, answers, required, submission_ids, missing, unknown,
                      duplicates, evaluator, notes)


def write_evaluation(evaluation: Evaluation, out: str | os.PathLike) -> tuple[Path, Path | None]:
    """Write `results.json` and (when complete) the submission file into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sub_path: Path | None = out / submission_name(evaluation.task, evaluation.split)
    if evaluation.missing_ids:
        sub_path = None
        evaluation.notes.append("submission file not written: it must cover every question")
    else:
        writer = {"vqa": submission.write_vqa_submission, "gqa": submission.write_gqa_submission,
                  "nlvr2": submission.write_nlvr2_submission}[evaluation.task]
        writer(sub_path, evaluation.answers, evaluation.submission_ids)
    results = results_record(evaluation, sub_path)
    results_path = out / "results.json"
    write_json(results_path, results)
    return results_path, sub_path


def results_record(evaluation: Evaluation, submission_path: Path | None = None) -> dict[str, Any]:
    """The `results.json` content: the metric keys at the top level, then provenance."""
    record: dict[str, Any] = {"task": evaluation.task, "split": evaluation.split}
    record.update(evaluation.metrics)
    record.update({
        "evaluator": evaluation.evaluator,
        "gold_file": str(evaluation.files.gold),
        "choices_file": str(evaluation.files.choices) if evaluation.files.choices else None,
        "missing_predictions": len(evaluation.missing_ids),
        "missing_policy": MISSING_POLICY_SCORED if evaluation.missing_ids else None,
        "unknown_predictions": len(evaluation.unknown_ids),
        "duplicate_predictions": evaluation.duplicates,
        "submission": submission_path.name if submission_path else None,
        "notes": list(evaluation.notes),
    })
    return record
