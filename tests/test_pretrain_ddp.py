"""Pretraining with DistributedDataParallel over 2 Dask CPU workers (gloo) equals one process."""

from __future__ import annotations

import pytest

from pipeline.pretraining import PretrainOptions
from pipeline.stages.pretrain import prepare_pretraining
from pipeline.stages.training import train_run
from pipeline.training import RunDir, TrainConfig, train
from tests.helpers.pretrain_world import make_world
from tests.helpers.training_tasks import assert_same_weights
from workflows.executors import DaskExecutor


# every task; and matching alone, which leaves the visual stream's last layer without a
# gradient (DDP must not wait for it)
@pytest.mark.parametrize("tasks", [None, ["matched"]], ids=["all-tasks", "matching-only"])
def test_two_gloo_workers_end_three_steps_with_the_parameters_of_one_process(tmp_path, tasks):
    data, store = make_world(tmp_path)
    # dropout off: the only randomness left is the data's, which is the same in both runs
    options = PretrainOptions(model={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
                              **({"tasks": tasks} if tasks else {}))
    task, summary = prepare_pretraining(store, data, tmp_path / "prepared", preset="tiny", options=options)
    config = dict(steps=3, batch_size=32, lr=1e-3, optimizer="bert", warmup=0.0, log_every=1, progress=False,
                  seed=5, val_every=3)
    # rank r of 2 builds slice r of each global batch with random stream r; one process with
    # 2 accumulation micro-batches builds the same two slices with the same two streams
    single = RunDir(tmp_path / "single")
    single.check_writable()
    reference = train(task, TrainConfig(**config, grad_accum=2), single)
    with DaskExecutor(workers=2) as executor:
        out = train_run(task, TrainConfig(**config), tmp_path / "ddp", executor, resume=False,
                        record={"data_summary": summary})
    assert out["step"] == 3
    assert_same_weights(reference.final_dir, tmp_path / "ddp" / "final")
    ddp_lines = [m for m in RunDir(tmp_path / "ddp").metrics() if m.get("split") != "val"]
    single_lines = [m for m in single.metrics() if m.get("split") != "val"]
    for x, y in zip(ddp_lines, single_lines, strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-5
    # rank 0 alone wrote the run: one validation line per due step, a self-contained final/
    assert [m["step"] for m in RunDir(tmp_path / "ddp").metrics() if m.get("split") == "val"] == [3]
    assert (tmp_path / "ddp" / "final" / "vocab.txt").is_file()
