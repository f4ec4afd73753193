"""One command, one result (issue 28, items 5 and 6): a learnt vocabulary and a fresh
pretraining run are the same for the same seed, the small recipes' precision is chosen once
per machine and kept by a resumed run, and `--resume` refuses options and stores other than
the run's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from model.tokenizer import train_wordpiece
from pipeline.errors import PipelineError
from pipeline.finetune.tasks import training_sentences
from pipeline.stages.finetune import FinetuneOptions, finetune
from pipeline.stages.pretrain import pretrain
from pipeline.training import precision
from tests.helpers.feature_data import make_image, make_metadata, make_store
from tests.helpers.pretrain_world import make_world
from workflows.cli import main

LOOP = {"steps": 2, "batch_size": 16, "seed": 3, "log_every": 1, "progress": False}


@pytest.fixture(autouse=True)
def machine_cache(tmp_path, monkeypatch):
    """A fresh per-machine cache, so no test reads or writes the user's."""
    monkeypatch.setenv("LXMERT_PIPELINE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("reproducible"), images=60)


@pytest.fixture(scope="module")
def two_runs(world, tmp_path_factory):
    """Two fresh pretraining runs of one command (learnt vocabulary, the recipe's precision)."""
    data, store = world
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LXMERT_PIPELINE_CACHE", str(root / "cache"))
        for name in ("a", "b"):
            pretrain(store, data, root / name, preset="tiny", layers=[LOOP])
    return root / "a", root / "b"


def test_a_learnt_vocabulary_is_the_same_file_for_the_same_sentences(world, tmp_path):
    data, _ = world
    sentences = list(training_sentences(str(data)))
    assert len(sentences) > 100
    for name in ("first", "second", "third"):
        train_wordpiece(sentences, tmp_path / name, vocab_size=300)
    for name in ("vocab.txt", "tokenizer.json"):
        first = (tmp_path / "first" / name).read_bytes()
        assert (tmp_path / "second" / name).read_bytes() == first
        assert (tmp_path / "third" / name).read_bytes() == first


def test_two_fresh_pretraining_runs_with_one_seed_are_identical(two_runs):
    a, b = two_runs
    assert (a / "tokenizer" / "vocab.txt").read_bytes() == (b / "tokenizer" / "vocab.txt").read_bytes()
    first, second = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    record_a, record_b = (yaml.safe_load((run / "config.yaml").read_text()) for run in (a, b))
    assert record_a["train"]["precision"] == record_b["train"]["precision"]


def test_the_small_recipes_precision_is_measured_once_per_machine(machine_cache):
    from pipeline.pretraining.recipe import recipe

    if not precision.cpu_has_native_bf16():   # nothing to measure: fp32 on every run
        assert precision.fast_precision() == "fp32" and not machine_cache.exists()
        return
    measured = precision.fast_precision()
    entries = json.loads((machine_cache / "precision.json").read_text())
    assert entries[precision.machine_key()]["precision"] == measured
    # what was decided stays decided: a later run (another process too) reads it, not a new timing
    flipped = {"bf16": "fp32", "fp32": "bf16"}[measured]
    entries[precision.machine_key()]["precision"] = flipped
    (machine_cache / "precision.json").write_text(json.dumps(entries))
    assert precision.fast_precision() == flipped and recipe("tiny")["precision"] == flipped


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_pretrain_resume_refuses_another_learning_rate(two_runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    code = main(["pretrain", "--features", recorded["task_options"]["features"], "--data",
                 recorded["task_options"]["data"], "--out", str(run), "--preset", "tiny", "--resume", "--lr", "0.5",
                 "--no-progress"])
    assert code == 1
    line = _one_line(capsys)
    assert str(run / "config.yaml") in line and "train.lr" in line


def test_pretrain_resume_takes_a_moved_store_only_when_it_is_the_same_store(two_runs, tmp_path, capsys,
                                                                          machine_cache):
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    data, store = recorded["task_options"]["data"], recorded["task_options"]["features"]

    # another store that fits the model: refused in one line, the run untouched
    _, other = make_world(tmp_path / "another", images=60, seed=9)
    code = main(["pretrain", "--features", str(other), "--data", data, "--out", str(run), "--preset", "tiny",
                 "--resume", "--steps", "3", "--no-progress"])
    assert code == 1
    line = _one_line(capsys)
    assert str(run / "config.yaml") in line and str(other) in line and "checksums differ" in line
    assert yaml.safe_load((run / "config.yaml").read_text()) == recorded

    # the same store moved elsewhere: accepted, and config.yaml names what the run now reads;
    # the run also keeps its recorded precision though this machine's choice changed meanwhile
    moved = tmp_path / "moved-store"
    shutil.copytree(store, moved)
    other_precision = {"bf16": "fp32", "fp32": "bf16"}[recorded["train"]["precision"]]
    machine_cache.mkdir(parents=True, exist_ok=True)
    (machine_cache / "precision.json").write_text(json.dumps({precision.machine_key(): {"precision": other_precision}}))
    result = pretrain(moved, data, run, preset="tiny", layers=[{**LOOP, "steps": 3}], resume=True)
    assert result["step"] == 3
    now = yaml.safe_load((run / "config.yaml").read_text())
    assert now["task_options"]["features"] == str(moved) and now["features_moved"] == [store]
    assert now["features_sha256"] == recorded["features_sha256"]
    assert now["train"]["precision"] == recorded["train"]["precision"]

    # another store put where the run's store was: refused as well
    shutil.rmtree(moved)
    shutil.copytree(other, moved)
    with pytest.raises(PipelineError, match="not the one this run trained on"):
        pretrain(moved, data, run, preset="tiny", layers=[{**LOOP, "steps": 4}], resume=True)


def test_finetune_resume_refuses_another_learning_rate(tmp_path, capsys):
    store = make_store(tmp_path / "store", [make_image(i, dim=8) for i in range(4)], make_metadata(dim=8))
    data = tmp_path / "data"
    (data / "nlvr2").mkdir(parents=True)
    lines = [{"identifier": f"train-{i}-0-0", "sentence": "the left image holds two dogs",
              "label": ["True", "False"][i % 2], "left_image": f"img{i % 4:06d}.png",
              "right_image": f"img{(i + 1) % 4:06d}.png"} for i in range(8)]
    (data / "nlvr2" / "train.json").write_text("".join(json.dumps(e) + "\n" for e in lines))
    run = tmp_path / "run"
    options = FinetuneOptions.from_dict({"task": "nlvr2", "init": "none", "preset": "tiny",
                                         "features": str(store.directory), "data": str(data),
                                         "valid_split": "none"})
    finetune(options, run, layers=[{"steps": 1, "batch_size": 4, "progress": False}])
    assert (run / "config.yaml").is_file()
    code = main(["finetune", "--task", "nlvr2", "--init", "none", "--preset", "tiny", "--features",
                 str(store.directory), "--data", str(data), "--valid", "none", "--out", str(run), "--resume",
                 "--batch-size", "4", "--lr", "0.5", "--no-progress"])
    assert code == 1
    line = _one_line(capsys)
    assert str(run / "config.yaml") in line and "train.lr" in line
