"""GQA metrics against numbers computed by hand from eval.py's definitions (docs/reference/evaluation.md §3.3)."""

import copy

import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation.gqa import chi_square_distribution, gqa_metrics, steps_count
from tests.helpers.official_eval_files import GQA_CHOICES as CHOICES, GQA_PREDICTIONS as PREDICTIONS, \
    GQA_QUESTIONS as QUESTIONS

# QUESTIONS, CHOICES, PREDICTIONS: seven questions; which answers are right and why is written
# beside them in tests/helpers/official_eval_files.py


def test_every_metric_by_hand():
    m = gqa_metrics(QUESTIONS, PREDICTIONS, CHOICES)
    # balanced B = 01 02 03 04 06 07 (6); correct 01 03
    assert m["questions"] == 6
    assert m["accuracy"] == pytest.approx(100 * 2 / 6)
    assert m["binary"] == pytest.approx(100 * 1 / 3)      # verify 02, choose 03, compare 06
    assert m["open"] == pytest.approx(100 * 1 / 3)        # query 01 04 07
    assert m["validity"] == pytest.approx(100 * 5 / 6)    # all but 04
    assert m["plausibility"] == pytest.approx(100 * 4 / 6)  # not 04, not 02 ("no" not plausible)
    # correct with entailed: 01 -> [05] right (1.0); 03 -> [02] wrong (0.0)
    assert m["consistency"] == pytest.approx(50.0)
    # color: gold {red:2, blue:1}, predicted {red:3}: (3-2)^2/2 + (0-1)^2/1 = 1.5, N=3
    # object: gold {cup:1}, predicted {banana:1}: 1, N=1   -> (1.5*3 + 1*1) / 4 / 100
    assert m["distribution"] == pytest.approx(5.5 / 4 / 100)
    assert m["unavailable"] == {}
    assert m["missing_predictions"] == 0


def test_breakdowns_by_hand():
    m = gqa_metrics(QUESTIONS, PREDICTIONS, CHOICES)
    assert m["per_structural_type"] == {
        "choose": {"accuracy": 100.0, "questions": 1}, "compare": {"accuracy": 0.0, "questions": 1},
        "query": {"accuracy": pytest.approx(100 / 3), "questions": 3}, "verify": {"accuracy": 0.0, "questions": 1}}
    assert m["per_semantic_type"] == {"attr": {"accuracy": 50.0, "questions": 4},     # 01 03 06 07
                                      "obj": {"accuracy": 0.0, "questions": 1}, "rel": {"accuracy": 0.0, "questions": 1}}
    # words: 01/04/07 have 5, 02 has 4, 03 has 6, 06 has 10
    assert m["per_length"] == {4: {"accuracy": 0.0, "questions": 1}, 5: {"accuracy": pytest.approx(100 / 3), "questions": 3},
                               6: {"accuracy": 100.0, "questions": 1}, 10: {"accuracy": 0.0, "questions": 1}}
    # steps: "exist: ?" and "query: name" do not count -> 03 and 04 have 2; 06 has 3
    assert m["per_steps"] == {2: {"accuracy": 40.0, "questions": 5}, 3: {"accuracy": 0.0, "questions": 1}}


def test_steps_exclusions():
    ops = lambda *pairs: {"semantic": [{"operation": o, "argument": a} for o, a in pairs]}
    assert steps_count(ops(("select", "x"), ("exist", "?"), ("query", "name"), ("choose name", "a|b"))) == 1
    assert steps_count(ops(("select", "x"), ("query", "color"))) == 2


def test_exact_case_sensitive_match():
    m = gqa_metrics(QUESTIONS, {**PREDICTIONS, "01": "Red", "03": "red."}, CHOICES)
    assert m["accuracy"] == 0.0
    assert m["consistency"] is None and "entailed" in m["unavailable"]["consistency"]


def test_unbalanced_questions_only_feed_consistency():
    wrong_05 = gqa_metrics(QUESTIONS, {**PREDICTIONS, "05": "yes"}, CHOICES)
    assert wrong_05["accuracy"] == pytest.approx(100 * 2 / 6)
    assert wrong_05["consistency"] == 0.0               # 01's entailed 05 now wrong; 03's 02 wrong


def test_consistency_needs_predictions_for_entailed_questions():
    preds = {k: v for k, v in PREDICTIONS.items() if k != "05"}
    m = gqa_metrics(QUESTIONS, preds, CHOICES)
    assert m["consistency"] is None
    assert "no prediction for 1 entailed" in m["unavailable"]["consistency"]
    assert m["accuracy"] == pytest.approx(100 * 2 / 6) and m["missing_predictions"] == 0


def test_consistency_needs_the_all_questions_file():
    balanced = {k: v for k, v in QUESTIONS.items() if v["isBalanced"]}
    m = gqa_metrics(balanced, PREDICTIONS, CHOICES)
    assert m["consistency"] is None and "all_questions" in m["unavailable"]["consistency"]
    assert m["accuracy"] == pytest.approx(100 * 2 / 6)


def test_no_choices_file_means_unavailable_not_zero():
    m = gqa_metrics(QUESTIONS, PREDICTIONS, None)
    assert m["validity"] is None and m["plausibility"] is None
    assert m["unavailable"]["validity"] == "no choices file"
    assert m["accuracy"] == pytest.approx(100 * 2 / 6)


def test_missing_balanced_prediction_counts_as_wrong():
    preds = {k: v for k, v in PREDICTIONS.items() if k != "01"}
    m = gqa_metrics(QUESTIONS, preds, CHOICES)
    assert m["missing_predictions"] == 1
    assert m["accuracy"] == pytest.approx(100 * 1 / 6)
    assert m["validity"] == pytest.approx(100 * 4 / 6)
    # color: predicted {red:2} (03, 07) vs gold {red:2, blue:1}: 0 + 1 = 1, N=3; object 1, N=1
    assert m["distribution"] == pytest.approx((1 * 3 + 1 * 1) / 4 / 100)
    assert m["consistency"] == 0.0                       # only 03 (correct) remains, its entailed 02 is wrong


def test_empty_subsets_and_no_groups_are_unavailable():
    only_query = {"07": QUESTIONS["07"]}
    m = gqa_metrics(only_query, {"07": "blue"}, CHOICES)
    assert m["accuracy"] == 100.0 and m["open"] == 100.0 and m["binary"] is None
    assert "binary" in m["unavailable"]
    assert m["consistency"] is None                      # no correct question has entailed questions
    ungrouped = copy.deepcopy(only_query)
    ungrouped["07"]["groups"]["global"] = None
    assert gqa_metrics(ungrouped, {"07": "blue"}, CHOICES)["distribution"] is None


def test_chi_square_ignores_answers_never_gold_in_the_group():
    assert chi_square_distribution({"g": {"a": 2}}, {"g": {"a": 2, "zzz": 5}}) == 0.0
    # two groups weighted by size: ((4-2)^2/2 * 2 + (0-1)^2/1 * 1) / 3 / 100
    assert chi_square_distribution({"g": {"a": 2}, "h": {"b": 1}}, {"g": {"a": 4}}) == pytest.approx(5 / 3 / 100)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(PipelineError, match="no balanced question"):
        gqa_metrics({"05": QUESTIONS["05"]}, PREDICTIONS, CHOICES)
    with pytest.raises(PipelineError, match="choices file has no entry for balanced question 07"):
        gqa_metrics(QUESTIONS, PREDICTIONS, {k: v for k, v in CHOICES.items() if k != "07"})
    broken = {"01": {"question": "x", "isBalanced": True}}
    with pytest.raises(PipelineError, match="01 lacks field"):
        gqa_metrics(broken, PREDICTIONS, None)
