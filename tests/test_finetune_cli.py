"""`lxmert-pipeline finetune` on Dask: flags and options file, `evaluate --run` on the result,
and (slow) a DDP run over two workers, resumed with more steps."""

from __future__ import annotations

import json

import pytest

from pipeline.training import RunDir
from tests.helpers.finetune_world import make_world
from workflows.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("finetune-cli"), seed=6)


def _command(world, tmp_path, run, steps, *extra):
    data, store = world
    options = tmp_path / "options.yaml"
    options.write_text("train:\n  batch_size: 8\n  lr: 0.002\ntask:\n  preset: tiny\n  valid_split: dev\n")
    return [str(a) for a in ["finetune", "--task", "nlvr2", "--init", "none", "--features", store, "--data", data,
                             "--out", run, "--config", options, "--steps", steps, "--checkpoint-every", "2",
                             "--no-progress", *extra]]


def test_finetune_command_trains_on_a_dask_worker_and_evaluates(world, tmp_path, capsys):
    data, _ = world
    run = tmp_path / "run"
    assert main(_command(world, tmp_path, run, 4)) == 0
    err = capsys.readouterr().err
    assert "nlvr2: 4 steps" in err and "best validation accuracy" in err
    record = RunDir(run).read_config()
    assert record["train"]["batch_size"] == 8 and record["train"]["lr"] == 0.002     # file
    assert record["train"]["steps"] == 4 and record["train"]["clip_norm"] == 5.0     # flag, recipe
    assert record["task_options"]["valid_split"] == "dev" and record["stage"] == "finetune"
    assert (run / "final" / "model.safetensors").is_file() and (run / "best" / "best.json").is_file()
    # the same command again refuses to overwrite the run
    assert main(_command(world, tmp_path, run, 4)) == 1
    assert "already holds a training run" in capsys.readouterr().err

    assert main(["evaluate", "--task", "nlvr2", "--run", str(run), "--data", str(data), "--split", "dev"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "nlvr2" and (run / results["submission"]).is_file()


@pytest.mark.slow
def test_ddp_over_two_workers_and_resume_with_more_steps(world, tmp_path):
    run = tmp_path / "run"
    assert main(_command(world, tmp_path, run, 4, "--workers", "2")) == 0
    assert main(_command(world, tmp_path, run, 6, "--workers", "2", "--resume")) == 0
    assert max(m["step"] for m in RunDir(run).metrics()) == 6
    assert (run / "final" / "model.safetensors").is_file()


def test_command_errors_are_one_line(world, tmp_path, capsys):
    data, store = world
    base = ["finetune", "--features", str(store), "--data", str(data), "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main([*base, "--task", "gqa", "--init", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such run, checkpoint directory or checkpoint file" in err[0]
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--task", "vqa", "--loss", "ce", "--preset", "tiny"])
    assert exit_.value.code == 2 and "vqa fine-tunes with bce" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--task", "vqa", "--out", str(tmp_path / "r"), "--steps", "1"])
    assert exit_.value.code == 2 and "--features is required" in capsys.readouterr().err
