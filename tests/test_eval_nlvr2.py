"""NLVR2 accuracy and consistency by hand (docs/reference/evaluation.md §4)."""

import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation.nlvr2 import consistency_group, nlvr2_metrics
from tests.helpers.official_eval_files import NLVR2_EXAMPLES as EXAMPLES


def test_group_key_blanks_the_pair_field():
    assert consistency_group("dev-850-2-0") == "dev-850--0"
    with pytest.raises(PipelineError):
        consistency_group("dev850")


def test_accuracy_and_consistency_by_hand():
    preds = {"dev-1-0-0": "true", "dev-1-1-0": "False", "dev-1-2-0": "False", "dev-1-0-1": "FALSE",
             "dev-2-0-0": "True"}
    m = nlvr2_metrics(EXAMPLES, preds)
    assert m["accuracy"] == 80.0                   # 4 of 5; comparison is case-insensitive
    # groups dev-1--0 (one wrong: inconsistent), dev-1--1 and dev-2--0 (consistent): 2/3.
    # Grouping by sentence text would give 1/2 instead.
    assert m["consistency"] == pytest.approx(200 / 3)
    assert m["groups"] == 3 and m["examples"] == 5


def test_missing_prediction_is_wrong_and_breaks_its_group():
    preds = {"dev-1-0-0": "True", "dev-1-1-0": "False", "dev-1-2-0": "True", "dev-1-0-1": "False"}
    m = nlvr2_metrics(EXAMPLES, preds)
    assert m["missing_predictions"] == 1
    assert m["accuracy"] == 80.0 and m["consistency"] == pytest.approx(200 / 3)


def test_empty_gold_is_an_error():
    with pytest.raises(PipelineError):
        nlvr2_metrics([], {})
