"""The official GQA metrics (`eval.py` "ver 1.1", docs/reference/evaluation.md §3), as a pure function.

Every metric is over the *balanced* questions B (`isBalanced` true) of the questions file,
with exact, case-sensitive string equality and no answer normalisation:

* accuracy over B; binary over B with structural type != "query" (choose counts as
  binary); open over B with structural type == "query";
* validity / plausibility: the prediction is in `choices[q]["valid"|"plausible"]`, except
  that questions whose detailed type contains "Common" accept color/material/shape;
* consistency: for each correctly answered q in B with entailed questions E_q (q itself
  excluded), the accuracy over E_q; averaged over those q. Entailed questions are often
  unbalanced, so this needs the all-questions file and predictions for them;
* distribution: per global group, chi-square of the predicted against the gold answer
  histogram (predicted answers never gold in the group are ignored), weighted by the
  group size, divided by 100 (lower is better, not a percentage);
* breakdowns by structural type, semantic type, question length in words and number of
  reasoning steps, each as (accuracy, count).

Where the official script prints 0.00 for an empty set (its `avg([]) == 0`) or crashes
(no grouped question, entailed questions absent), this reports None with a reason in
`unavailable`: a metric that could not be computed is never shown as 0.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping

from pipeline.errors import PipelineError

MAIN_METRICS = ("accuracy", "binary", "open", "validity", "plausibility", "consistency", "distribution")
BREAKDOWNS = ("per_structural_type", "per_semantic_type", "per_length", "per_steps")
COMMON_GROUP = ["color", "material", "shape"]
_STEP_EXCLUDED = ("exist", "query: name", "choose name")


def words_count(question: Mapping[str, Any]) -> int:
    return len(question["question"].split())


def steps_count(question: Mapping[str, Any]) -> int:
    """Reasoning steps: operations whose "op: argument" string mentions none of the final-query ops."""
    return len([op for op in question.get("semantic") or []
                if not any(x in f"{op['operation']}: {op['argument']}" for x in _STEP_EXCLUDED)])


def _belongs(answer: str, group: list, question: Mapping[str, Any]) -> bool:
    if "Common" in question["types"]["detailed"]:
        group = COMMON_GROUP
    return answer in group


def _pct(scores: list[float]) -> float | None:
    return 100.0 * float(sum(scores)) / len(scores) if scores else None


def chi_square_distribution(gold: Mapping[str, Mapping[str, int]],
                            predicted: Mapping[str, Mapping[str, int]]) -> float | None:
    """eval.py's `chiSquare(...) / 100`; None when no question has a global group."""
    sum_score, sum_overall = 0.0, 0
    for group, gold_counts in gold.items():
        score, overall = 0.0, 0
        pred_counts = predicted.get(group, {})
        for answer, expected in gold_counts.items():
            observed = pred_counts.get(answer, 0)
            score += float(observed - expected) ** 2 / expected
            overall += expected
        sum_score += score * overall
        sum_overall += overall
    if sum_overall == 0:
        return None
    return float(sum_score) / sum_overall / 100


def question_scores(questions: Mapping[str, Mapping[str, Any]], predictions: Mapping[str, str]) -> dict[str, float]:
    """questionId -> 1.0 / 0.0 for every balanced question: the numbers `accuracy` averages."""
    return {qid: 1.0 if predictions.get(qid) == q["answer"] else 0.0
            for qid, q in questions.items() if q.get("isBalanced")}


def gqa_metrics(questions: Mapping[str, Mapping[str, Any]], predictions: Mapping[str, str],
                choices: Mapping[str, Mapping[str, list]] | None = None, split: str | None = None) -> dict[str, Any]:
    """All GQA metrics from the questions file, the predictions and (optionally) the choices file.

    `questions` is a questions file as loaded from json (`{split}_all_questions.json`, or the
    balanced one, in which case consistency is usually unavailable); `predictions` maps
    questionId (str) -> answer; `choices` is `{split}_choices.json`, or None when absent
    (validity and plausibility are then unavailable). A balanced question without a
    prediction counts as wrong, invalid and implausible and adds nothing to the predicted
    histogram (the official script refuses such a file; the caller decides whether to).
    `split` names the split's files in the notes on unavailable metrics.
    """
    all_questions = f"{split or '<split>'}_all_questions.json"
    scores: dict[str, list[float]] = {k: [] for k in ("accuracy", "binary", "open", "validity",
                                                     "plausibility", "consistency")}
    breakdowns: dict[str, dict[Any, list[float]]] = {k: defaultdict(list) for k in BREAKDOWNS}
    gold_hist: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    pred_hist: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    unavailable: dict[str, str] = {}
    missing = 0
    entailed_missing_question: set[str] = set()
    entailed_missing_prediction: set[str] = set()

    for qid, q in questions.items():
        try:
            if not q["isBalanced"]:
                continue
            gold = q["answer"]
            structural, semantic = q["types"]["structural"], q["types"]["semantic"]
            group = q["groups"]["global"]
            entailed = q.get("entailed") or []
            words, steps = words_count(q), steps_count(q)
        except (KeyError, TypeError) as err:
            raise PipelineError(f"GQA question {qid} lacks field {err}") from None
        predicted = predictions.get(qid)
        if predicted is None:
            missing += 1
        correct = predicted is not None and predicted == gold
        score = 1.0 if correct else 0.0

        scores["accuracy"].append(score)
        scores["open" if structural == "query" else "binary"].append(score)
        breakdowns["per_structural_type"][structural].append(score)
        breakdowns["per_semantic_type"][semantic].append(score)
        breakdowns["per_length"][words].append(score)
        breakdowns["per_steps"][steps].append(score)

        if choices is not None:
            if qid not in choices:
                raise PipelineError(f"the choices file has no entry for balanced question {qid}")
            valid = predicted is not None and _belongs(predicted, choices[qid]["valid"], q)
            plausible = predicted is not None and _belongs(predicted, choices[qid]["plausible"], q)
            scores["validity"].append(1.0 if valid else 0.0)
            scores["plausibility"].append(1.0 if plausible else 0.0)

        if group is not None:
            gold_hist[group][gold] += 1
            if predicted is not None:
                pred_hist[group][predicted] += 1

        inferred = [e for e in entailed if e != qid]
        if correct and inferred:
            entailed_scores = []
            for e in inferred:
                if e not in questions:
                    entailed_missing_question.add(e)
                elif e not in predictions:
                    entailed_missing_prediction.add(e)
                else:
                    entailed_scores.append(1.0 if predictions[e] == questions[e]["answer"] else 0.0)
            if entailed_scores and len(entailed_scores) == len(inferred):
                scores["consistency"].append(float(sum(entailed_scores)) / len(entailed_scores))

    if not scores["accuracy"]:
        raise PipelineError("the GQA questions file has no balanced question")

    result: dict[str, Any] = {}
    for name in ("accuracy", "binary", "open", "validity", "plausibility", "consistency"):
        result[name] = _pct(scores[name])
    result["distribution"] = chi_square_distribution(gold_hist, pred_hist)

    if result["binary"] is None:
        unavailable["binary"] = "no balanced binary question"
    if result["open"] is None:
        unavailable["open"] = "no balanced open (query) question"
    if choices is None:
        unavailable["validity"] = unavailable["plausibility"] = "no choices file"
    if entailed_missing_question:
        result["consistency"] = None
        unavailable["consistency"] = (f"{len(entailed_missing_question)} entailed questions are not in the "
                                      f"questions file (consistency needs {all_questions})")
    elif entailed_missing_prediction:
        result["consistency"] = None
        unavailable["consistency"] = (f"no prediction for {len(entailed_missing_prediction)} entailed questions "
                                      f"(consistency needs a prediction for every question of "
                                      f"{all_questions})")
    elif result["consistency"] is None:
        unavailable["consistency"] = "no correctly answered balanced question has entailed questions"
    if result["distribution"] is None:
        unavailable["distribution"] = "no balanced question has a global group"

    for name in BREAKDOWNS:
        result[name] = {key: {"accuracy": _pct(v), "questions": len(v)}
                        for key, v in sorted(breakdowns[name].items())}
    result["questions"] = len(scores["accuracy"])
    result["missing_predictions"] = missing
    result["unavailable"] = unavailable
    return result
