"""VQA v2 accuracy against hand-computed answers and an independent transcription of the
official per-question loop (docs/reference/evaluation.md §2)."""

import hashlib
import re

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.errors import PipelineError
from pipeline.evaluation.vqa import question_accuracy, vqa_metrics
from pipeline.evaluation.vqa_normalization import (CONTRACTIONS, normalize_answer, process_digit_article,
                                                   process_punctuation)
from tests.helpers.official_eval_files import VQA_ANNOTATIONS as ANNOTATIONS, VQA_PREDICTIONS as PREDICTIONS, \
    vqa_annotation


# ---------------------------------------------------------------- normalisation vectors
@pytest.mark.parametrize("text, expected", [
    ("a-b, c", "a b c"),          # "-" touches no space -> space; ", " exists -> "," deleted
    ("1,000", "1000"),            # digit-comma-digit anywhere: every punctuation char deleted
    ("1,2,3", "123"),
    ("red-white, 1,5", "redwhite 15"),  # the global \d,\d rule also deletes the "-" without a space
    ("yes.", "yes"),              # a period not followed by a digit goes
    ("2.5", "2.5"),               # ... one followed by a digit stays
    ("red!", "red "),             # "!" touches no space -> becomes a space (no strip here)
    ("yes !", "yes "),            # " !" exists -> deleted
    ("3:00", "3:00"),             # ":" is not in the official list
    ("don't", "don't"),           # nor is the apostrophe
    ("#1 & 50%", "#1 & 50%"),
    ("2.\u0663", "2.\u0663"),     # Python 3 \d matches the Arabic-Indic digit: the period stays
])
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


def test_at_most_32_periods_removed():
    # the official passes re.UNICODE (32) as sub()'s count: 40 periods -> the last 8 survive
    assert process_punctuation("a." * 40) == "a" * 32 + "a." * 8


@pytest.mark.parametrize("text, expected", [
    ("Two Dogs", "2 dogs"),        # lowercase, then whole-token number words
    ("the two", "2"),              # articles dropped after mapping
    ("left one", "left 1"),
    ("eleven", "eleven"),          # only zero..ten (and none) are mapped
    ("none", "0"),                 # "none" maps to 0 (issue GT-Vision-Lab/VQA#7)
    ("the", ""),                   # only articles -> empty
    ("  a   red  car ", "red car"),  # split() collapses whitespace
    ("dont", "don't"),
    ("Im", "im"),                  # capitalised keys never match: words are lowercased first
    ("somebody'd", "somebodyd"),   # typo in the official map, applied as written
    ("let's", "let's"),
])
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_contraction_map_is_the_official_one():
    # 120 entries; sha256 prefix of repr(sorted(items)) from docs/reference/evaluation.md §2.2
    assert len(CONTRACTIONS) == 120
    assert hashlib.sha256(repr(sorted(CONTRACTIONS.items())).encode()).hexdigest().startswith("8f189686e9ad")


# ---------------------------------------------------------------- per question
@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (7, 1.0), (10, 1.0)])
def test_leave_one_out_closed_form(k, expected):
    # k of 10 annotators said "x": mean over i of min(1, matches among the other 9 / 3)
    # = (k*min(1,(k-1)/3) + (10-k)*min(1,k/3)) / 10
    gt = ["x"] * k + ["y"] * (10 - k)
    assert question_accuracy(gt, "x") == pytest.approx(expected, abs=1e-12)


def test_leave_one_out_is_by_index_with_duplicate_answers():
    # 7 x "yes" + 3 x "no": removing by answer *value* would drop all 7 "yes" and give 0.3
    assert question_accuracy(["yes"] * 7 + ["no"] * 3, "yes") == 1.0
    assert question_accuracy(["yes"] * 7 + ["no"] * 3, "no") == pytest.approx(0.9)


def test_leave_one_out_with_fewer_answers():
    # answers a,a,b and prediction a: leaving out either "a" leaves 1 match (1/3),
    # leaving out "b" leaves 2 (2/3): mean (1/3 + 1/3 + 2/3) / 3 = 4/9
    assert question_accuracy(["a", "a", "b"], "a") == pytest.approx(4 / 9)


@pytest.mark.parametrize("gt, pred, v2021, v2017", [
    (["yes"] * 10, "Yes", 0.0, 1.0),          # unanimous GT: 2021 compares raw; 2017 normalises the prediction
    (["2"] * 10, "two", 0.0, 1.0),
    (["yes"] * 10, "yes.", 0.0, 1.0),
    (["yes"] * 2 + ["yes "] * 8, "yes", 1.0, 0.6),  # 2021 strips GT first -> unanimous; 2017: k=2
    (["two"] * 9 + ["2"], "2", 1.0, 0.3),      # 2021 maps GT number words; 2017 only strips punctuation
    (["yes!"] * 5 + ["no"] * 5, "yes", 1.0, 0.0),  # 2017: GT "yes!" -> "yes " never matches
    (["none"] + ["no"] * 9, "none", 0.3, 0.0),  # both sides "0" in 2021; 2017 GT stays "none"
    (["a dog"] * 4 + ["dogs"] * 6, "the Dog", 1.0, 0.0),  # articles and case, 2021 only
    (["red\tcar"] * 4 + ["blue"] * 6, "red car", 1.0, 0.0),  # 2021 cleans tabs in GT too
])
def test_2021_and_2017_behaviour(gt, pred, v2021, v2017):
    assert question_accuracy(gt, pred, "2021") == pytest.approx(v2021)
    assert question_accuracy(gt, pred, "2017") == pytest.approx(v2017)


def test_unknown_version_is_refused():
    with pytest.raises(ValueError):
        question_accuracy(["a"], "a", "2019")


# ---------------------------------------------------------------- independent transcription
def _official_2021(answers, res):
    """Transcribed from the official loop's structure: answer dicts with answer_id, in-place
    normalisation, removal of the left-out annotator by dict inequality."""
    def punct(s):
        out = s
        for p in [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                  ",", "?", "!"]:
            if (p + " " in s or " " + p in s) or re.search(r"(\d)(\,)(\d)", s) is not None:
                out = out.replace(p, "")
            else:
                out = out.replace(p, " ")
        return re.compile(r"(?!<=\d)(\.)(?!\d)").sub("", out, 32)

    def digit(s):
        nums = dict(none="0", zero="0", one="1", two="2", three="3", four="4", five="5", six="6", seven="7",
                    eight="8", nine="9", ten="10")
        words = [nums.get(w, w) for w in s.lower().split()]
        words = [w for w in words if w not in ["a", "an", "the"]]
        return " ".join(CONTRACTIONS.get(w, w) for w in words)

    gts = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]
    for g in gts:
        g["answer"] = g["answer"].replace("\n", " ").replace("\t", " ").strip()
    res = res.replace("\n", " ").replace("\t", " ").strip()
    if len(set(g["answer"] for g in gts)) > 1:
        for g in gts:
            g["answer"] = digit(punct(g["answer"]))
        res = digit(punct(res))
    accs = []
    for g in gts:
        others = [x for x in gts if x != g]
        accs.append(min(1, float(len([x for x in others if x["answer"] == res])) / 3))
    return float(sum(accs)) / len(accs)


_TOKENS = st.sampled_from(["yes", "Yes", "no", "two", "2", "the", "a", "dog", "dogs", "none", "0", "dont",
                           "red-white", "1,5", "yes!", "ok.", " ", "\t", ",", "?", "3.5", "(x)"])
_ANSWER = st.lists(_TOKENS, min_size=1, max_size=3).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ANSWER, min_size=10, max_size=10), _ANSWER)
def test_matches_transcription_of_the_official_loop(gt, pred):
    assert question_accuracy(gt, pred, "2021") == _official_2021(gt, pred)


# ---------------------------------------------------------------- aggregation and rounding
# ANNOTATIONS, PREDICTIONS: four questions, each one's score worked out beside it in
# tests/helpers/official_eval_files.py


def test_overall_per_answer_type_and_per_question_type():
    m = vqa_metrics(ANNOTATIONS, PREDICTIONS)
    assert m["overall"] == 47.5                 # 100 * (1 + 0.3 + 0 + 0.6) / 4
    assert m["yes/no"] == 100.0
    assert m["number"] == 30.0
    assert m["other"] == 30.0                   # (0 + 0.6) / 2
    assert m["per_question_type"] == {"how many": 30.0, "is the": 100.0, "what color": 30.0}
    assert m["questions"] == 4 and m["missing_predictions"] == 0


def test_rounding_to_the_official_precision():
    anns = {"annotations": ANNOTATIONS["annotations"][:3]}
    assert vqa_metrics(anns, PREDICTIONS)["overall"] == 43.33            # 130 / 3 = 43.333...
    assert vqa_metrics(anns, PREDICTIONS, precision=1)["overall"] == 43.3
    assert vqa_metrics(anns, {1: "yes", 2: "3", 3: "red"})["number"] == 30.0
    # 2 of 3 correct: 66.666... rounds up
    assert vqa_metrics(anns, {1: "yes", 2: "x", 3: "red"})["overall"] == 66.67


def test_missing_predictions_score_zero_and_are_counted():
    m = vqa_metrics(ANNOTATIONS, {1: "yes", 4: "white"})
    assert m["missing_predictions"] == 2
    assert m["overall"] == 40.0                 # (1 + 0 + 0 + 0.6) / 4
    assert m["number"] == 0.0


def test_absent_answer_type_is_none_not_zero():
    m = vqa_metrics({"annotations": ANNOTATIONS["annotations"][:1]}, PREDICTIONS)
    assert m["yes/no"] == 100.0 and m["number"] is None and m["other"] is None


def test_2017_option_changes_only_what_it_should():
    m = vqa_metrics(ANNOTATIONS, PREDICTIONS, version="2017")
    # q2: 2017 normalises "three" -> "3", GT "3" once -> 0.3; q4: "White" -> "white", k=2 -> 0.6
    assert m["overall"] == 47.5
    m = vqa_metrics(ANNOTATIONS, {1: "Yes", 2: "three", 3: "blue", 4: "White"}, version="2017")
    assert m["yes/no"] == 100.0                 # 2017 normalises the prediction even for unanimous GT
    assert vqa_metrics(ANNOTATIONS, {1: "Yes"})["yes/no"] == 0.0   # 2021 does not


def test_bad_annotations_are_one_clear_error():
    with pytest.raises(PipelineError, match="no 'annotations'"):
        vqa_metrics({"questions": []}, {})
    with pytest.raises(PipelineError, match="question 5 has no answers"):
        vqa_metrics({"annotations": [vqa_annotation(5, [], "other", "what")]}, {})


def test_normalize_answer_is_both_steps():
    assert normalize_answer("The Two, dogs!") == "2 dogs"
