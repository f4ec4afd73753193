"""`evaluate --run`: a fine-tuned run's model answers every question of a split, the answers
are scored with the official metrics and written in the official submission formats; runs
of another task, unknown splits and stores that do not fit are one line each."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from model import load_pretrained
from tests.helpers.finetune_world import make_world

from workflows.cli import main
from pipeline.errors import PipelineError
from pipeline.stages.finetune import FinetuneOptions, finetune
from pipeline.finetune.predict import predict
from pipeline.finetune.splits import read_gqa_split, read_nlvr2_split, read_vqa_split
from pipeline.finetune.tasks import VQATask
from pipeline.inputs.text import load_run_tokenizer
from pipeline.synth.oracle import write_oracle_store
from pipeline.training import RunDir, TrainConfig

SPLITS = {"vqa": "val2014", "gqa": "testdev", "nlvr2": "dev"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # tiny models: see test_finetune.py
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A world and one small fine-tuned run per task (validated, so each has best/ and final/)."""
    root = tmp_path_factory.mktemp("predict")
    data, store = make_world(root, seed=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for task in SPLITS:
        config = TrainConfig(epochs=3, batch_size=8 if task == "nlvr2" else 16, lr=2e-3, warmup=0.1, clip_norm=5.0,
                             best_metric="accuracy", progress=False, seed=2)
        finetune(FinetuneOptions(task, str(store), str(data), preset="tiny"), root / task, layers=[config.to_dict()])
        out[task] = root / task
    torch.set_num_threads(threads)
    return data, store, out


def evaluate(*args):
    return main(["evaluate", *map(str, args)])


def test_vqa_run_writes_the_official_submission_and_results(runs, capsys):
    data, _, run = runs[0], runs[1], runs[2]["vqa"]
    assert evaluate("--task", "vqa", "--run", run, "--data", data, "--split", "val2014") == 0
    results = json.loads((run / "results.json").read_text())
    assert {"overall", "yes/no", "number", "other", "per_question_type", "per_answer_type"} <= set(results)
    assert results["missing_predictions"] == 0 and results["submission"] == "v2_OpenEnded_mscoco_val2014_results.json"
    submitted = json.loads((run / results["submission"]).read_text())
    questions = read_vqa_split(data, "val2014")
    assert [r["question_id"] for r in submitted] == [q.question_id for q in questions]
    answers = json.loads((run / "answers.json").read_text())
    assert all(isinstance(r["question_id"], int) and r["answer"] in answers for r in submitted)
    # the official metric and the run's own validation (LXMERT's soft score) measure the same thing
    best = RunDir(run).best_record()["value"]
    assert abs(results["overall"] - best) < 10
    assert "overall" in capsys.readouterr().out


def test_gqa_run_predicts_every_question_and_its_accuracy_is_the_validation_one(runs):
    data, _, run = runs[0], runs[1], runs[2]["gqa"]
    out = run.parent / "gqa-eval"
    assert evaluate("--task", "gqa", "--run", run, "--data", data, "--split", "testdev", "--out", out) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"accuracy", "binary", "open", "consistency", "validity", "plausibility", "distribution"} <= set(results)
    # all questions answered (entailed, unbalanced ones too): consistency is computed
    submitted = json.loads((out / "testdev_predictions.json").read_text())
    every = read_gqa_split(data, "testdev", all_questions=True)
    assert len(every) > len(read_gqa_split(data, "testdev"))
    assert [r["questionId"] for r in submitted] == [q.question_id for q in every]
    assert all(isinstance(r["questionId"], str) for r in submitted)
    assert results["consistency"] is not None and results["missing_predictions"] == 0
    # the official accuracy (balanced questions) is what the run validated best/ with
    balanced = len(read_gqa_split(data, "testdev"))
    assert abs(results["accuracy"] - RunDir(run).best_record()["value"]) <= 100 / balanced + 1e-9


def test_nlvr2_run_writes_the_csv_and_final_can_be_chosen(runs):
    data, _, run = runs[0], runs[1], runs[2]["nlvr2"]
    for checkpoint in ("best", "final"):
        out = run.parent / f"nlvr2-{checkpoint}"
        assert evaluate("--task", "nlvr2", "--run", run, "--data", data, "--split", "dev", "--out", out,
                        "--checkpoint", checkpoint) == 0
        results = json.loads((out / "results.json").read_text())
        assert {"accuracy", "consistency"} <= set(results)
        rows = list(csv.reader((out / "dev_predictions.csv").read_text().splitlines()))
        assert [r[0] for r in rows] == [e.identifier for e in read_nlvr2_split(data, "dev")]
        assert {r[1] for r in rows} <= {"True", "False"}
    assert json.loads((run.parent / "nlvr2-best" / "results.json").read_text())["accuracy"] == pytest.approx(
        RunDir(run).best_record()["value"])


def test_predict_returns_the_contract_ids_and_answers(runs):
    data, _, run_paths = runs
    task, answers = predict(run_paths["gqa"], data, "val")
    assert task == "gqa" and set(answers) == {q.question_id for q in read_gqa_split(data, "val", all_questions=True)}
    task, answers = predict(run_paths["nlvr2"], data, "test1", batch_size=3)
    assert task == "nlvr2" and set(answers.values()) <= {"True", "False"}
    assert len(answers) == len(read_nlvr2_split(data, "test1"))


def test_bf16_predictions_agree_with_fp32(runs):
    """--precision bf16 (weights cast once, autocast) answers as fp32 does up to bf16 rounding."""
    data, _, run_paths = runs
    for name, split in (("gqa", "val"), ("nlvr2", "dev")):
        _, fp32 = predict(run_paths[name], data, split)
        _, bf16 = predict(run_paths[name], data, split, precision="bf16")
        assert set(bf16) == set(fp32)
        assert sum(bf16[k] == fp32[k] for k in fp32) >= 0.9 * len(fp32)
    with pytest.raises(PipelineError, match="precision must be one of fp32, bf16"):
        predict(run_paths["gqa"], data, "val", precision="fp16")


def test_a_language_only_run_predicts_without_looking_at_images(runs, tmp_path):
    data, store, _ = runs
    run = tmp_path / "text-only"
    config = TrainConfig(steps=6, batch_size=16, lr=2e-3, progress=False, best_metric="accuracy")
    finetune(FinetuneOptions("vqa", str(store), str(data), preset="tiny", language_only=True), run, layers=[config.to_dict()])
    assert RunDir(run).read_config()["task_options"]["language_only"] is True
    _, answers = predict(run, data, "val2014")
    questions = read_vqa_split(data, "val2014")
    # what the model answers with blank images, and (it does look at images) with the real ones
    model = load_pretrained(run / "best").eval()
    outputs = {}
    for blank in (True, False):
        task = VQATask(store=str(store), data=str(data), tokenizer_dir=str(run / "best"), init=None,
                       answers=model.config.answers, language_only=blank)
        source = task.batches(questions, load_run_tokenizer(run / "best"), labelled=False)
        batch = source.make_batch(np.arange(len(questions)), np.random.default_rng(0), 0)
        with torch.no_grad():
            outputs[blank] = model(**batch).question_answering_score
    assert not torch.allclose(outputs[True], outputs[False])
    assert [answers[q.question_id] for q in questions] == task.answer_strings(outputs[True].argmax(-1))


def test_bad_requests_are_one_line(runs, tmp_path, capsys):
    data, store, run_paths = runs
    # a run fine-tuned for another task: refused before predicting
    assert evaluate("--task", "vqa", "--run", run_paths["gqa"], "--data", data, "--split", "val2014") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fine-tuned for gqa, not vqa" in err[0]
    # an unknown split names the file it looked for and the splits there are
    with pytest.raises(PipelineError, match=r"unknown nlvr2 split 'test2'.*nlvr2/test2\.json.*dev, test1, train"):
        predict(run_paths["nlvr2"], data, "test2")
    # a store of another detector's features (dimension) than the run was trained on
    wider = write_oracle_store(data, tmp_path / "wider", feature_dim=48)
    assert evaluate("--task", "nlvr2", "--run", run_paths["nlvr2"], "--data", data, "--split", "dev",
                    "--features", wider) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(wider) in err[0] and "feature dim 48 (model expects 32)" in err[0]
    # a store without the split's images
    other = make_world(tmp_path / "other", images=60, seed=9)[1]
    with pytest.raises(PipelineError, match="images of nlvr2 split 'dev' are not in the feature store"):
        predict(run_paths["nlvr2"], data, "dev", features=other)
    # not a fine-tuning run
    (tmp_path / "pretrain").mkdir()
    (tmp_path / "pretrain" / "config.yaml").write_text("task: pretrain\n")
    with pytest.raises(PipelineError, match="not a fine-tuning run"):
        predict(tmp_path / "pretrain", data, "dev")


def test_asking_one_image_answers_as_the_split_prediction_does(runs):
    from pipeline.features import FeatureStore
    from pipeline.finetune.ask import ask
    from pipeline.finetune.predict import load_finetuned

    data, store_path, run = runs[0], runs[1], runs[2]
    store = FeatureStore(store_path)
    for task, reader in (("vqa", read_vqa_split), ("gqa", read_gqa_split)):
        loaded = load_finetuned(run[task])
        _, answers = predict(run[task], data, SPLITS[task])
        for example in reader(data, SPLITS[task])[:3]:
            reply = ask(loaded, example.sentence, [store.get(example.image_id)], store.metadata, top=3)
            assert reply.answers[0][0] == answers[example.question_id]
            probs = [p for _, p in reply.answers]
            assert probs == sorted(probs, reverse=True) and all(0.0 <= p <= 1.0 for p in probs)
            assert reply.attention.weights.shape[1] == store.get(example.image_id).num_boxes
    loaded = load_finetuned(run["nlvr2"])
    _, answers = predict(run["nlvr2"], data, "dev")
    example = read_nlvr2_split(data, "dev")[0]
    reply = ask(loaded, example.sentence, [store.get(i) for i in example.image_ids], store.metadata)
    assert reply.answers[0][0] == answers[example.identifier]
    assert abs(sum(p for _, p in reply.answers) - 1.0) < 1e-5
    with pytest.raises(PipelineError, match="two images"):
        ask(loaded, example.sentence, [store.get(example.image_ids[0])], store.metadata)
