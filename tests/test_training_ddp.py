"""DDP across Dask workers (gloo on CPU): equality with one process, and a lost worker."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.training import RunDir, TrainConfig, train
from tests.helpers.training_tasks import ClusterTask, assert_same_weights
from pipeline.stages.training import train_run
from workflows.executors import DaskExecutor


def run_training(task, config, out, *, workers: int, resume: bool = False):
    with DaskExecutor(workers=workers) as executor:
        return train_run(task, config, out, executor, resume=resume)


def _config(**kw):
    base = dict(steps=3, batch_size=16, lr=1e-2, warmup=0.0, log_every=1, optimizer="adamw",
                progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_two_gloo_workers_end_with_the_parameters_of_one_process(tmp_path):
    task = ClusterTask(dropout=0.0, noise=0.0)     # no randomness in the step: DDP == full batch
    single = RunDir(tmp_path / "single")
    single.check_writable()
    ref = train(task, _config(), single)
    out = run_training(task, _config(), tmp_path / "ddp", workers=2)
    assert out["step"] == 3
    assert_same_weights(ref.final_dir, tmp_path / "ddp" / "final")
    assert (tmp_path / "ddp" / "config.yaml").exists()


def test_a_lost_worker_fails_the_run_clearly_and_resume_finishes_it(tmp_path):
    run = tmp_path / "run"
    dying = ClusterTask(dropout=0.0, noise=0.0, die_at_step=4)
    config = _config(steps=8, checkpoint_every=2)
    with pytest.raises(PipelineError, match=r"rank 1\) was lost mid-run.*--resume.*step-0000004"):
        run_training(dying, config, run, workers=2)
    out = run_training(ClusterTask(dropout=0.0, noise=0.0), config, run, workers=2, resume=True)
    assert out["step"] == 8 and (run / "final" / "model.safetensors").exists()
