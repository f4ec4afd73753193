"""The official NLVR2 metrics (lil-lab/nlvr `nlvr2/eval/metrics.py`), as a pure function.

* accuracy: `prediction.lower() == label.lower()` over every example of the gold file
  (case-insensitive string comparison of "True"/"False");
* consistency: examples are grouped by their identifier with the pair field blanked
  (`split-set_id-pair_id-sentence_id` -> `split-set_id--sentence_id`: one written sentence
  with all the image pairs it was paired with); a group is consistent when every example
  in it is correct. Grouping is by identifier, never by sentence text.

The official prints fractions; here both are percentages.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pipeline.errors import PipelineError


def consistency_group(identifier: str) -> str:
    parts = identifier.split("-")
    if len(parts) < 3:
        raise PipelineError(f"NLVR2 identifier {identifier!r} is not split-set-pair-sentence")
    parts[2] = ""
    return "-".join(parts)


def _correct(prediction: str | None, label: Any) -> bool:
    return prediction is not None and prediction.lower() == str(label).lower()


def question_scores(examples: Sequence[Mapping[str, Any]], predictions: Mapping[str, str]) -> dict[str, float]:
    """identifier -> 1.0 / 0.0 per example: the numbers `accuracy` averages."""
    return {ex["identifier"]: 1.0 if _correct(predictions.get(ex["identifier"]), ex["label"]) else 0.0
            for ex in examples}


def nlvr2_metrics(examples: Sequence[Mapping[str, Any]], predictions: Mapping[str, str]) -> dict[str, Any]:
    """`examples`: the gold file's records (json lines) with `identifier` and `label`;
    `predictions`: identifier -> "True"/"False" (any case). An example without a
    prediction counts as wrong and makes its group inconsistent (the official script
    refuses such a file; the caller decides whether to)."""
    if not examples:
        raise PipelineError("the NLVR2 file has no examples")
    correct = 0
    consistent: dict[str, bool] = {}
    missing = 0
    for ex in examples:
        try:
            identifier, label = ex["identifier"], ex["label"]
        except (KeyError, TypeError) as err:
            raise PipelineError(f"NLVR2 example {ex!r:.80} lacks field {err}") from None
        group = consistency_group(identifier)
        consistent.setdefault(group, True)
        pred = predictions.get(identifier)
        if pred is None:
            missing += 1
        if _correct(pred, label):
            correct += 1
        else:
            consistent[group] = False
    return {
        "accuracy": 100.0 * correct / len(examples),
        "consistency": 100.0 * sum(consistent.values()) / len(consistent),
        "examples": len(examples),
        "groups": len(consistent),
        "missing_predictions": missing,
    }
