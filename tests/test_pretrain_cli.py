"""`lxmert-pipeline pretrain`: a run end to end on Dask, its outputs, --resume, and one-line errors."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from model import LxmertForQuestionAnswering, load_pretrained
from pipeline.inputs.text import load_run_tokenizer
from pipeline.synth.oracle import oracle_images
from tests.helpers.feature_data import make_store
from tests.helpers.pretrain_world import make_world
from workflows.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("pretrain-cli"))


def _pretrain(data, store, out, *extra):
    return main(["pretrain", "--features", str(store), "--data", str(data), "--out", str(out), "--preset", "tiny",
                 "--batch-size", "16", "--log-every", "1", "--no-progress", *extra])


def test_a_run_on_dask_is_self_contained_and_resumes(world, tmp_path, capsys):
    data, store = world
    run = tmp_path / "run"
    assert _pretrain(data, store, run, "--steps", "4", "--checkpoint-every", "2", "--precision", "fp32") == 0
    final = run / "final"
    assert {"model.safetensors", "config.json", "resume.pt", "vocab.txt", "tokenizer.json"} <= set(os.listdir(final))
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    described = recorded["task_options"]
    assert described["features"] == str(store) and described["data"] == str(data) and described["preset"] == "tiny"
    assert described["model"]["hidden_size"] == 32 and described["options"]["visual_label_loss_scope"] == "all"
    assert recorded["train"]["steps"] == 4 and recorded["data_summary"]["train"]["examples"] > 0
    # what the fine-tuning stage loads: the QA model with its own answers, and the run's tokenizer
    answers = json.loads((run / "answers.json").read_text())
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LxmertForPreTraining"]
    qa = load_pretrained(final, LxmertForQuestionAnswering, answers=answers[:3] + ["never seen"])
    assert qa.config.num_qa_labels == 4
    tokenizer = load_run_tokenizer(run)
    assert tokenizer.vocab_size == described["model"]["vocab_size"]
    err = capsys.readouterr().err
    assert "pretrained 4 of 4 steps" in err and f"model: {final}" in err

    # resuming keeps the recorded settings; a longer --steps extends the run
    assert _pretrain(data, store, run, "--resume", "--steps", "6") == 0
    steps = [m["step"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if m.get("split") != "val"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "pretrained 6 of 6 steps" in capsys.readouterr().err
    assert "already holds a training run" in _error(lambda: _pretrain(data, store, run, "--steps", "2"), capsys)


def _error(call, capsys) -> str:
    assert call() == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_user_errors_are_one_line_naming_the_file(world, tmp_path, capsys):
    data, store = world
    options = tmp_path / "opts.yaml"
    options.write_text("task:\n  model:\n    visual_feat_dim: 2048\n")
    line = _error(lambda: _pretrain(data, store, tmp_path / "a", "--steps", "2", "--config", str(options)), capsys)
    assert str(store) in line and "feature dim 32 (model expects 2048)" in line

    images, meta = oracle_images(data, feature_dim=32)
    foreign = make_store(tmp_path / "foreign", [images[0].__class__(**{**vars(images[0]), "image_id": "x"})], meta)
    line = _error(lambda: _pretrain(data, foreign.directory, tmp_path / "b", "--steps", "2"), capsys)
    assert "no usable pretraining examples" in line and str(data) in line

    (tmp_path / "a-file").write_text("")
    line = _error(lambda: _pretrain(data, store, tmp_path / "a-file" / "run", "--steps", "2"), capsys)
    assert "not writable" in line and str(tmp_path / "a-file" / "run") in line
    assert not (tmp_path / "b" / "config.yaml").exists()
