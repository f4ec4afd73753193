"""The training loop: BertAdam and schedule against the reference formulas, exact resume,
gradient accumulation, run directory and errors (single process, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.errors import PipelineError
from pipeline.training import BertAdam, RunDir, TrainConfig, train, warmup_linear, warmup_linear_schedule
from tests.helpers.training_tasks import ClusterTask


def _reference_bert_adam(p0, grads, lr, warmup, t_total, wd=0.01, b1=0.9, b2=0.999, eps=1e-6):
    """pytorch-pretrained-bert BertAdam written out in numpy (docs/reference/lxmert.md §1.6)."""
    p, m, v = p0.astype(np.float64).copy(), np.zeros_like(p0, np.float64), np.zeros_like(p0, np.float64)
    for step, g in enumerate(grads):
        x = step / t_total
        sched = x / warmup if x < warmup else max((x - 1.0) / (warmup - 1.0), 0.0)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = m / (np.sqrt(v) + eps) + wd * p
        p = p - lr * sched * update
    return p


def test_warmup_linear_matches_reference_formula():
    assert warmup_linear(0.0, 0.05) == 0.0
    assert warmup_linear(0.025, 0.05) == pytest.approx(0.5)
    assert warmup_linear(0.05, 0.05) == pytest.approx(1.0)
    assert warmup_linear(0.525, 0.05) == pytest.approx(0.5)
    assert warmup_linear(1.0, 0.05) == 0.0
    assert warmup_linear(1.2, 0.05) == 0.0


def test_bert_adam_with_schedule_matches_reference():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 3)).astype(np.float32)
    grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(10)]
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = BertAdam([param], lr=0.1, weight_decay=0.01)
    sched = warmup_linear_schedule(opt, warmup=0.2, total_steps=10)
    lrs = []
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[2] == pytest.approx(0.1)   # first update has lr 0, like BertAdam
    expected = _reference_bert_adam(p0, grads, lr=0.1, warmup=0.2, t_total=10)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # and it is not AdamW: bias correction would move the first real step much further
    adamw = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    o2 = torch.optim.AdamW([adamw], lr=0.1, weight_decay=0.01, eps=1e-6)
    s2 = warmup_linear_schedule(o2, 0.2, 10)
    for g in grads:
        adamw.grad = torch.from_numpy(g.copy())
        o2.step()
        s2.step()
    assert not np.allclose(adamw.detach().numpy(), expected, atol=1e-3)


def _config(**kw):
    base = dict(epochs=2, batch_size=16, lr=3e-3, warmup=0.1, log_every=1, checkpoint_every=4,
                optimizer="bert", progress=False, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def _train_losses(run: RunDir):
    return [(m["step"], m["loss"], m["ce"], m["lr"]) for m in run.metrics() if m.get("split") != "val"]


@pytest.mark.parametrize("accum,workers", [(1, 0), (2, 1)])
def test_killed_and_resumed_run_gives_exactly_the_uninterrupted_losses(tmp_path, accum, workers):
    task = ClusterTask()   # dropout on, per-batch noise on: both RNG streams must resume exactly
    config = _config(grad_accum=accum, num_workers=workers)
    full = RunDir(tmp_path / "full")
    full.check_writable()
    result = train(task, config, full)
    assert result.step == 12 and Path(result.final_dir) == full.path / "final"

    cut = RunDir(tmp_path / "cut")
    cut.check_writable()
    train(task, config, cut, stop_after=9)        # killed after step 9: last checkpoint is step 8 (mid-epoch)
    assert cut.latest_checkpoint().name == "step-0000008"
    assert max(m["step"] for m in cut.metrics()) == 9
    resumed = train(task, config, cut, resume=True)
    assert resumed.step == 12

    assert _train_losses(cut) == _train_losses(full)
    a = load_file(str(full.path / "final" / "model.safetensors"))
    b = load_file(str(cut.path / "final" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the loss fell, and validation ran each epoch
    losses = [x[1] for x in _train_losses(full)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert [m["step"] for m in full.metrics() if m.get("split") == "val"] == [6, 12]


def test_gradient_accumulation_equals_the_full_batch():
    params = []
    for accum in (1, 4):
        task = ClusterTask(dropout=0.0, noise=0.0)
        config = _config(grad_accum=accum, steps=5, epochs=None, optimizer="adamw", checkpoint_every=None)
        result_dir = RunDir(f"/tmp/accum-{accum}-{np.random.randint(1 << 30)}")
        result_dir.check_writable()
        res = train(task, config, result_dir)
        params.append(load_file(str(res.final_dir / "model.safetensors")))
    for k in params[0]:
        torch.testing.assert_close(params[0][k], params[1][k], atol=1e-6, rtol=0)


def test_bf16_autocast_trains(tmp_path):
    run = RunDir(tmp_path / "bf16")
    run.check_writable()
    res = train(ClusterTask(), _config(precision="bf16", steps=6, epochs=None), run)
    assert res.step == 6 and np.isfinite(res.last_metrics["loss"])


def test_errors_are_one_clear_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(PipelineError, match="not writable"):
        RunDir(tmp_path / "a-file" / "run").check_writable()
    run = RunDir(tmp_path / "small")
    run.check_writable()
    with pytest.raises(PipelineError, match="do not fill one batch"):
        train(ClusterTask(n=10), _config(), run)
    with pytest.raises(ValueError, match="not divisible"):
        _config(batch_size=10, grad_accum=3).micro_batch_size(1)
    with pytest.raises(ValueError, match="exactly one of steps or epochs"):
        TrainConfig(steps=3, epochs=1)


def test_config_round_trips_through_yaml(tmp_path):
    run = RunDir(tmp_path)
    config = _config(extra={"qa_from_epoch": 3})
    run.write_config({"train": config.to_dict()})
    assert TrainConfig.from_dict(run.read_config()["train"]) == config
    assert json.loads(json.dumps(config.to_dict()))["betas"] == [0.9, 0.999]


def test_best_validation_is_kept_beside_the_last_and_survives_a_resume(tmp_path):
    task = ClusterTask()
    config = _config(epochs=4, best_metric="accuracy", checkpoint_every=None)
    run = RunDir(tmp_path / "run")
    run.check_writable()
    train(task, config, run, stop_after=12)       # killed after epoch 2 of 4
    first = run.best_record()
    assert first["metric"] == "accuracy" and first["step"] in (6, 12)
    train(task, config, run, resume=True)
    vals = [m for m in run.metrics() if m.get("split") == "val"]
    best = max(vals, key=lambda m: (m["accuracy"], -m["step"]))   # the first of equal bests stays
    record = run.best_record()
    assert (record["value"], record["step"]) == (best["accuracy"], best["step"])
    saved = load_file(str(run.path / "best" / "model.safetensors"))
    assert saved.keys() == load_file(str(run.path / "final" / "model.safetensors")).keys()
    # lower-is-better metrics, e.g. a validation loss
    lower = RunDir(tmp_path / "lower")
    lower.check_writable()
    train(task, _config(epochs=2, best_metric="-accuracy"), lower)
    assert lower.best_record()["value"] == min(m["accuracy"] for m in lower.metrics() if m.get("split") == "val")


def test_a_checkpoint_writer_that_fails_leaves_the_previous_checkpoints_as_they_were(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_writable()

    def write(text):
        def writer(directory):
            (directory / "model.safetensors").write_text(text)
            (directory / "resume.pt").write_text(text)
        return writer

    def killed(directory):
        (directory / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    first = run.save_checkpoint(10, write("step 10"), keep=2)
    run.save_best(write("best of step 10"), {"metric": "accuracy", "value": 0.5, "step": 10})
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint(20, killed, keep=2)
    with pytest.raises(KeyboardInterrupt):
        run.save_best(killed, {"metric": "accuracy", "value": 0.9, "step": 20})
    # no step-20 (complete or not), and nothing under a temporary name either
    assert run.checkpoints() == [first]
    assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["step-0000010"]
    assert sorted(p.name for p in run.path.iterdir()) == ["best", "checkpoints"]
    assert (first / "model.safetensors").read_text() == "step 10"
    assert run.best_record()["step"] == 10
    assert (run.path / "best" / "model.safetensors").read_text() == "best of step 10"
    # a later save of the same step replaces the directory as a whole
    run.save_checkpoint(10, lambda d: (d / "model.safetensors").write_text("again"), keep=2)
    assert sorted(p.name for p in first.iterdir()) == ["model.safetensors"]
