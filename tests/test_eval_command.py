"""`lxmert-pipeline evaluate --predictions FILE`: the official files under a data root laid
out as the datasets ship, one results.json, one submission file, one clear line for bad input."""

import json

import pytest

from tests.helpers.official_eval_files import GQA_PREDICTIONS, GQA_QUESTIONS, VQA_PREDICTIONS, write_data_root
from workflows.cli import main


@pytest.fixture
def data(tmp_path):
    return write_data_root(tmp_path / "data")


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def evaluate(*args):
    return main(["evaluate", *map(str, args)])


def test_vqa_predictions_file(tmp_path, data, capsys):
    preds = _write(tmp_path, "vqa.json", [{"question_id": q, "answer": a} for q, a in VQA_PREDICTIONS.items()])
    assert evaluate("--task", "vqa", "--predictions", preds, "--data", data, "--split", "val2014",
                    "--out", tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (results["overall"], results["yes/no"], results["number"], results["other"]) == (47.5, 100.0, 30.0, 30.0)
    assert results["per_question_type"]["what color"] == 30.0
    assert results["missing_predictions"] == 0 and results["task"] == "vqa" and results["split"] == "val2014"
    submitted = json.loads((tmp_path / "out" / results["submission"]).read_text())
    assert {r["question_id"]: r["answer"] for r in submitted} == VQA_PREDICTIONS
    table = capsys.readouterr().out
    assert "overall" in table and "47.50%" in table and "how many" in table

    # the 2017 behaviour on request: unanimous "yes" vs "Yes" scores in 2017 only
    preds = _write(tmp_path, "vqa2.json", [{"question_id": 1, "answer": "Yes"}] +
                   [{"question_id": q, "answer": a} for q, a in VQA_PREDICTIONS.items() if q != 1])
    for version, expected in (("2021", 0.0), ("2017", 100.0)):
        assert evaluate("--task", "vqa", "--predictions", preds, "--data", data, "--split", "val2014",
                        "--out", tmp_path / version, "--vqa-eval", version) == 0
        assert json.loads((tmp_path / version / "results.json").read_text())["yes/no"] == expected


def test_gqa_predictions_file(tmp_path, data, capsys):
    preds = _write(tmp_path, "gqa.json", [{"questionId": q, "prediction": a} for q, a in GQA_PREDICTIONS.items()])
    assert evaluate("--task", "gqa", "--predictions", preds, "--data", data, "--split", "val",
                    "--out", tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["accuracy"] == pytest.approx(100 * 2 / 6) and results["consistency"] == 50.0
    assert results["distribution"] == pytest.approx(5.5 / 4 / 100)
    assert results["per_steps"] == {"2": {"accuracy": 40.0, "questions": 5}, "3": {"accuracy": 0.0, "questions": 1}}
    submitted = json.loads((tmp_path / "out" / "val_predictions.json").read_text())
    assert [r["questionId"] for r in submitted] == list(GQA_QUESTIONS)     # every question, in file order
    out = capsys.readouterr().out
    assert "consistency" in out and "lower is better" in out


def test_gqa_balanced_only_split_reports_unavailable_metrics(tmp_path, data, capsys):
    preds = _write(tmp_path, "gqa.json", [{"questionId": q, "prediction": a} for q, a in GQA_PREDICTIONS.items()
                                          if q != "05"])
    assert evaluate("--task", "gqa", "--predictions", preds, "--data", data, "--split", "testdev",
                    "--out", tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["accuracy"] == pytest.approx(100 * 2 / 6)
    assert results["validity"] is None and results["plausibility"] is None and results["consistency"] is None
    assert set(results["unavailable"]) == {"validity", "plausibility", "consistency"}
    out = capsys.readouterr().out
    assert "validity" in out and "n/a   no choices file" in out


def test_gqa_chunked_questions_directory(tmp_path, data):
    # big GQA files ship as X/X_0.json, X/X_1.json ...; eval.py merges them
    (data / "gqa" / "val_all_questions.json").unlink()
    chunks = data / "gqa" / "val_all_questions"
    chunks.mkdir()
    items = list(GQA_QUESTIONS.items())
    (chunks / "val_all_questions_0.json").write_text(json.dumps(dict(items[:3])))
    (chunks / "val_all_questions_1.json").write_text(json.dumps(dict(items[3:])))
    preds = _write(tmp_path, "gqa.json", [{"questionId": q, "prediction": a} for q, a in GQA_PREDICTIONS.items()])
    assert evaluate("--task", "gqa", "--predictions", preds, "--data", data, "--split", "val",
                    "--out", tmp_path / "out") == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["consistency"] == 50.0


def test_nlvr2_predictions_file(tmp_path, data):
    preds = _write(tmp_path, "nlvr2.csv", "dev-1-0-0,True\ndev-1-1-0,False\ndev-1-2-0,False\ndev-1-0-1,False\n"
                                          "dev-2-0-0,True\n")
    assert evaluate("--task", "nlvr2", "--predictions", preds, "--data", data, "--split", "dev",
                    "--out", tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["accuracy"] == 80.0 and results["consistency"] == pytest.approx(200 / 3)
    assert (tmp_path / "out" / "dev_predictions.csv").read_text().startswith("dev-1-0-0,True\n")


def test_missing_predictions_are_counted_scored_and_block_the_submission(tmp_path, data, capsys):
    preds = _write(tmp_path, "vqa.json", [{"question_id": 1, "answer": "yes"}, {"question_id": 99, "answer": "x"}])
    assert evaluate("--task", "vqa", "--predictions", preds, "--data", data, "--split", "val2014",
                    "--out", tmp_path / "out") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["missing_predictions"] == 3 and results["unknown_predictions"] == 1
    assert results["overall"] == 25.0 and results["submission"] is None
    assert "scored as wrong" in results["missing_policy"]
    assert not (tmp_path / "out" / "v2_OpenEnded_mscoco_val2014_results.json").exists()
    assert "3 of 4 questions have no prediction" in capsys.readouterr().out

    assert evaluate("--task", "vqa", "--predictions", preds, "--data", data, "--split", "val2014",
                    "--out", tmp_path / "strict", "--strict") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 of the 4 vqa val2014 questions have no prediction" in err[0] and "--strict" in err[0]
    assert not (tmp_path / "strict" / "results.json").exists()


def test_unknown_split_lists_the_available_ones(tmp_path, data, capsys):
    preds = _write(tmp_path, "gqa.json", [])
    assert evaluate("--task", "gqa", "--predictions", preds, "--data", data, "--split", "tstdev",
                    "--out", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "unknown gqa split 'tstdev'" in err and "available gqa splits: testdev, val" in err
    assert evaluate("--task", "vqa", "--predictions", preds, "--data", data, "--split", "test2015",
                    "--out", tmp_path / "out") == 1
    assert "no annotations file" in capsys.readouterr().err
    assert evaluate("--task", "nlvr2", "--predictions", preds, "--data", data, "--split", "test1",
                    "--out", tmp_path / "out") == 1
    assert "available nlvr2 splits: dev" in capsys.readouterr().err


def test_usage_errors(tmp_path, data, capsys):
    preds = _write(tmp_path, "p.json", [])
    with pytest.raises(SystemExit) as exit_:
        evaluate("--task", "okvqa", "--predictions", preds, "--data", data, "--split", "val")
    assert exit_.value.code == 2 and "invalid choice: 'okvqa'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        evaluate("--task", "vqa", "--predictions", preds, "--data", data, "--split", "val2014")
    assert exit_.value.code == 2 and "--out DIR is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        evaluate("--task", "vqa", "--data", data, "--split", "val2014")
    assert exit_.value.code == 2


def test_a_folder_that_is_not_a_finetuning_run_is_one_line(tmp_path, data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    assert evaluate("--task", "vqa", "--run", run, "--data", data, "--split", "val2014") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a training run (no config.yaml)" in err[0] and str(run) in err[0]
    assert evaluate("--task", "vqa", "--run", tmp_path / "nope", "--data", data, "--split", "val2014") == 1
    assert "no such run directory" in capsys.readouterr().err
