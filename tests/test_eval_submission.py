"""Official submission formats: round trips, coverage, and one clear line for bad files."""

import json

import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation.submission import (read_gqa_predictions, read_nlvr2_predictions, read_vqa_predictions,
                                            write_gqa_submission, write_nlvr2_submission, write_vqa_submission)


def test_vqa_round_trip_in_question_order(tmp_path):
    answers = {458752000: "net", 1: "two dogs", 7: "don't know", 3: "ünïcode"}
    path = write_vqa_submission(tmp_path / "r.json", answers, [1, 3, 7, 458752000])
    records = json.loads(path.read_text(encoding="utf-8"))
    assert records[0] == {"question_id": 1, "answer": "two dogs"}
    assert [r["question_id"] for r in records] == [1, 3, 7, 458752000]
    assert read_vqa_predictions(path).answers == answers


def test_gqa_round_trip_keeps_leading_zeros(tmp_path):
    answers = {"07333408": "pipe", "201307251": "yes", "0": "no"}
    path = write_gqa_submission(tmp_path / "p.json", answers)
    assert json.loads(path.read_text())[0] == {"questionId": "07333408", "prediction": "pipe"}
    assert read_gqa_predictions(path).answers == answers


def test_nlvr2_round_trip(tmp_path):
    path = write_nlvr2_submission(tmp_path / "p.csv", {"dev-1-0-0": True, "dev-1-1-0": "false", "test1-9-3-1": "TRUE"})
    assert path.read_text() == "dev-1-0-0,True\ndev-1-1-0,False\ntest1-9-3-1,True\n"
    assert read_nlvr2_predictions(path).answers == {"dev-1-0-0": "True", "dev-1-1-0": "False", "test1-9-3-1": "True"}


def test_writers_refuse_incomplete_submissions(tmp_path):
    with pytest.raises(PipelineError, match="without 1 of the 2 required predictions"):
        write_gqa_submission(tmp_path / "p.json", {"1": "a"}, ["1", "2"])
    with pytest.raises(PipelineError, match="first: 9"):
        write_vqa_submission(tmp_path / "r.json", {1: "a"}, [1, 9])
    assert not list(tmp_path.iterdir())       # nothing half-written


def test_duplicates_last_wins_and_are_counted(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"},
                                {"question_id": 2, "answer": "c"}]))
    preds = read_vqa_predictions(path)
    assert preds.answers == {1: "b", 2: "c"} and preds.duplicates == 1 and preds.conflicting == [1]


def test_nlvr2_reader_skips_blank_lines_and_a_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("identifier,label\ndev-1-0-0,True\n\ndev-1-1-0,False\n")
    assert read_nlvr2_predictions(path).answers == {"dev-1-0-0": "True", "dev-1-1-0": "False"}


@pytest.mark.parametrize("reader, content, message", [
    (read_vqa_predictions, '{"question_id": 1}', "expected a json array"),
    (read_vqa_predictions, '[{"question_id": "1", "answer": "a"}]', "question_id must be an integer"),
    (read_vqa_predictions, '[{"question_id": 1, "answer": 2}]', "answer must be a string"),
    (read_vqa_predictions, '[{"questionId": "1", "prediction": "a"}]', "entry 0 is not"),
    (read_vqa_predictions, "[{", "not a json file"),
    (read_gqa_predictions, '[{"questionId": 7333408, "prediction": "a"}]', "questionId must be a string"),
    (read_nlvr2_predictions, "dev-1-0-0,1\n", "label must be True or False"),
    (read_nlvr2_predictions, "dev-1-0-0\n", "line 1 is not"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, reader, content, message):
    path = tmp_path / "pred"
    path.write_text(content)
    with pytest.raises(PipelineError, match=message) as err:
        reader(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(PipelineError, match="no such predictions file"):
        read_gqa_predictions(tmp_path / "nope.json")
