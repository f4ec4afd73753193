"""The paired bootstrap behind the demo's "pretrained beats scratch" line: per-question scores
that average to the official headline metric, and intervals that agree with the normal
approximation where it holds."""

import numpy as np
import pytest

from pipeline.evaluation.evaluate import evaluate_predictions
from pipeline.evaluation.significance import paired_bootstrap, question_scores
from tests.helpers.official_eval_files import GQA_PREDICTIONS, NLVR2_EXAMPLES, VQA_PREDICTIONS, write_data_root

NLVR2_PREDICTIONS = {e["identifier"]: ("False" if i % 3 else str(e["label"])) for i, e in enumerate(NLVR2_EXAMPLES)}


@pytest.fixture
def data(tmp_path):
    return write_data_root(tmp_path / "data")


@pytest.mark.parametrize("task, split, answers, headline", [
    ("vqa", "val2014", VQA_PREDICTIONS, "overall"),
    ("gqa", "val", GQA_PREDICTIONS, "accuracy"),
    ("nlvr2", "dev", NLVR2_PREDICTIONS, "accuracy")])
def test_question_scores_average_to_the_official_headline_metric(data, task, split, answers, headline):
    partial = dict(list(answers.items())[:-1])        # one question unanswered: scores 0, as officially
    for given in (answers, partial):
        scores = question_scores(task, given, data, split)
        evaluation = evaluate_predictions(task, given, data, split)
        assert len(scores) == len(evaluation.required_ids)
        assert 100 * np.mean(list(scores.values())) == pytest.approx(evaluation.metrics[headline], abs=0.005)


def _pairs(n_better, n_worse, n_same=200):
    a, b = {}, {}
    for i in range(n_better + n_worse + n_same):
        a[i] = 1.0 if i < n_better or i >= n_better + n_worse else 0.0
        b[i] = 1.0 if n_better <= i else 0.0
        if i >= n_better + n_worse:
            a[i] = b[i] = float(i % 2)
    return a, b


def test_a_model_right_where_the_other_is_wrong_is_clearly_better():
    a, b = _pairs(n_better=40, n_worse=10)
    diff = paired_bootstrap(a, b)
    d = np.array([a[k] - b[k] for k in a])
    normal = 1.96 * d.std() / np.sqrt(d.size) * 100
    assert diff.points == pytest.approx(100 * d.mean(), abs=0.01) and diff.questions == 250
    assert diff.clear
    assert diff.low == pytest.approx(diff.points - normal, abs=0.15 * normal)
    assert diff.high == pytest.approx(diff.points + normal, abs=0.15 * normal)


def test_as_many_wins_as_losses_is_not_a_difference():
    a, b = _pairs(n_better=25, n_worse=25)
    diff = paired_bootstrap(a, b)
    assert diff.points == 0 and diff.low < 0 < diff.high and not diff.clear
    same = paired_bootstrap(a, a)
    assert (same.points, same.low, same.high) == (0, 0, 0) and not same.clear


def test_scores_of_different_question_sets_are_refused():
    with pytest.raises(ValueError, match="different questions"):
        paired_bootstrap({1: 1.0, 2: 0.0}, {1: 1.0, 3: 0.0})
