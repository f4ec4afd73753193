"""What the loop's GPU paths share with the CPU, tested on the CPU: batches one step ahead in
the planned order, the data-wait record (loop.jsonl), fp16 with its gradient scaler (unscale
before the clip, overflowed steps skipped, the scaler in resume.pt), torch.compile with
checkpoints in the module's own names, the device a rank trains on, the `--compile` flag.
The same paths on a GPU: tests/test_training_cuda.py."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.errors import PipelineError
from pipeline.training import DistEnv, RunDir, TrainConfig, train
from pipeline.training.batches import EpochMicroBatches
from pipeline.training.checkpoint import load_resume, rng_state
from pipeline.training.prefetch import DeviceBatches
from tests.helpers.training_tasks import ClusterData, ClusterTask
from workflows.commands.training_options import add_training_arguments, flag_train_settings


class IndexedData(ClusterData):
    """Cluster points whose batches also carry their example indices, optionally sleep (a slow
    input pipeline), and mark the batch holding example `overflow_at` for an fp16 overflow."""

    def __init__(self, *args, delay_s: float = 0.0, overflow_at: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.delay_s, self.overflow_at = delay_s, overflow_at

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
        if self.delay_s:
            time.sleep(self.delay_s)
        batch = super().make_batch(indices, rng, epoch)
        batch["index"] = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        batch["overflow"] = torch.tensor(self.overflow_at is not None and self.overflow_at in indices)
        return batch


@dataclasses.dataclass
class IndexedTask(ClusterTask):
    """ClusterTask that records the example indices of every training micro-batch it is given,
    and whose loss is pushed past fp16's range on the marked batch."""
    delay_s: float = 0.0
    overflow_at: int | None = None
    seen: list = dataclasses.field(default_factory=list)

    def train_data(self) -> IndexedData:
        return IndexedData(self.n, self.dim, self.classes, 0, self.noise, delay_s=self.delay_s,
                           overflow_at=self.overflow_at)

    def loss(self, model, batch, epoch):
        if model.training:
            self.seen.append(batch["index"].tolist())
        ce, parts = super().loss(model, batch, epoch)
        # an inf loss: every gradient overflows, as an fp16 activation gradient past 65504 would
        return ce * torch.where(batch["overflow"], float("inf"), 1.0), parts


def _config(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=16, lr=3e-3, warmup=0.1, log_every=2, checkpoint_every=4,
                optimizer="bert", progress=False, seed=7)
    return TrainConfig(**{**base, **kw})


def _run(path) -> RunDir:
    run = RunDir(path)
    run.check_writable()
    return run


def _planned(task: ClusterTask, config: TrainConfig, steps: int) -> list[list[int]]:
    """The micro-batches the loop must train on, from the batch plan alone."""
    data = task.train_data()
    per_epoch = len(data) // config.batch_size
    out = []
    for step in range(steps):
        epoch, within = divmod(step, per_epoch)
        plan = EpochMicroBatches(data, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                 grad_accum=config.grad_accum, rank=0, world_size=1)
        out += [plan.indices(within * config.grad_accum + a).tolist() for a in range(config.grad_accum)]
    return out


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


# ---- batches one step ahead --------------------------------------------------------------

def test_device_batches_hand_out_the_loaders_batches_in_order_reading_nothing_before_asked():
    read = []

    def loader():
        for i in range(3):
            read.append(i)
            yield {"x": torch.full((2,), float(i)), "pair": (torch.tensor(i), "label")}

    batches = DeviceBatches(loader(), torch.device("cpu"))
    assert read == []                                   # lazy: the first next() pays for the first batch
    first = next(batches)
    assert read == [0, 1]                               # ... and starts the following one
    rest = list(batches)
    assert [int(b["x"][0]) for b in [first, *rest]] == [0, 1, 2]
    assert rest[-1]["pair"][1] == "label" and isinstance(rest[-1]["pair"], tuple)
    with pytest.raises(StopIteration):
        next(batches)


@pytest.mark.parametrize("accum,workers", [(1, 0), (2, 1)])
def test_the_loop_trains_on_the_planned_batches_in_order_through_a_resume(tmp_path, accum, workers):
    config = _config(grad_accum=accum, num_workers=workers)
    full = IndexedTask()
    train(full, config, _run(tmp_path / "full"))
    assert full.seen == _planned(full, config, 12)      # 6 steps an epoch: across the epoch boundary too

    cut = IndexedTask()
    run = _run(tmp_path / "cut")
    train(cut, config, run, stop_after=9)               # last checkpoint: step 8, mid-epoch
    resumed = IndexedTask()
    train(resumed, config, run, resume=True)
    assert resumed.seen == full.seen[8 * accum:]


# ---- the data-wait record ----------------------------------------------------------------

def test_loop_jsonl_records_the_share_of_time_spent_waiting_for_data_and_resumes_like_metrics(tmp_path):
    config = _config()
    run = _run(tmp_path / "run")
    train(IndexedTask(), config, run, stop_after=9)
    train(IndexedTask(), config, run, resume=True)
    records = run.loop_records()
    train_lines = [m for m in run.metrics() if m.get("split") != "val"]
    assert [r["step"] for r in records] == [m["step"] for m in train_lines] == [2, 4, 6, 8, 10, 12]
    for r in records:
        assert 0.0 <= r["data_wait_share"] <= 1.0 and r["seconds"] > 0 and r["examples_per_s"] > 0
        assert r["data_wait_s"] <= r["seconds"]
        assert "loss_scale" not in r and "max_memory_gib" not in r      # fp32 on a CPU

    # a slow input pipeline shows as waiting: every one of the 4 batches trained on, and the
    # one read ahead, slept 0.1 s inside the loop's next() (a lower bound, whatever the load)
    slow = _run(tmp_path / "slow")
    train(IndexedTask(delay_s=0.1), _config(steps=4), slow)
    waits = [r["data_wait_s"] for r in slow.loop_records()]
    assert len(waits) == 2 and sum(waits) >= 5 * 0.1


# ---- fp16 and its gradient scaler --------------------------------------------------------

def test_an_overflowing_fp16_step_is_skipped_the_schedule_waits_and_the_scale_halves(tmp_path):
    task = IndexedTask(overflow_at=5)
    config = _config(precision="fp16", steps=6, checkpoint_every=1, keep_checkpoints=10, log_every=1)
    run = _run(tmp_path / "run")
    train(task, config, run)
    bad = next(i for i, batch in enumerate(task.seen) if 5 in batch) + 1       # the step that overflowed
    assert bad > 1
    records = {r["step"]: r for r in run.loop_records()}
    assert [records[s]["skipped_steps"] for s in sorted(records)] == [int(s == bad) for s in sorted(records)]
    assert records[bad]["loss_scale"] == records[bad - 1]["loss_scale"] / 2 == 32768.0

    state = load_resume(run.path / "checkpoints" / f"step-{bad:07d}")
    assert state["scheduler"]["last_epoch"] == bad - 1                # the schedule counts updates made
    assert state["scaler"]["scale"] == 32768.0                        # the scaler travels in resume.pt
    assert all(s["step"] == bad - 1 for s in state["optimizer"]["state"].values())
    before = _weights(run.path / "checkpoints" / f"step-{bad - 1:07d}")
    after = _weights(run.path / "checkpoints" / f"step-{bad:07d}")
    assert all(torch.equal(before[k], after[k]) for k in before)       # no update from inf gradients
    assert all(torch.isfinite(v).all() for v in _weights(run.path / "final").values())


def test_an_fp16_run_whose_every_step_overflows_stops_with_one_clear_line(tmp_path):
    class Diverged(ClusterTask):
        def loss(self, model, batch, epoch):
            ce, parts = super().loss(model, batch, epoch)
            return ce * float("inf"), parts

    run = _run(tmp_path / "run")
    with pytest.raises(PipelineError, match="the loss became inf at step 17") as err:
        train(Diverged(n=400), _config(precision="fp16", steps=24, log_every=1, checkpoint_every=None), run)
    assert "\n" not in str(err.value)
    assert [r["loss_scale"] for r in run.loop_records()][-1] == 65536 / 2**16   # skipped on, until below 1


def test_fp16_unscales_before_clipping_so_it_moves_the_weights_as_fp32_does(tmp_path):
    # clipped at 1e-3, an fp16 gradient still multiplied by 65536 would come out ~65536x too
    # small and, in Adam's m / (sqrt(v) + eps), move the weights far less than fp32
    moved = {}
    for precision in ("fp32", "fp16"):
        config = _config(precision=precision, steps=6, clip_norm=1e-3, warmup=0.0, checkpoint_every=None)
        run = _run(tmp_path / precision)
        torch.manual_seed(config.seed)
        start = ClusterTask(dropout=0.0, noise=0.0).build_model().state_dict()
        train(ClusterTask(dropout=0.0, noise=0.0), config, run)
        end = _weights(run.path / "final")
        moved[precision] = torch.cat([(end[k] - start[k]).flatten() for k in start])
    assert moved["fp32"].norm() > 1e-3
    torch.testing.assert_close(moved["fp16"], moved["fp32"], rtol=0.05, atol=2e-4)


def test_a_killed_fp16_run_resumes_to_exactly_the_uninterrupted_one(tmp_path):
    config = _config(precision="fp16")
    full = _run(tmp_path / "full")
    train(IndexedTask(overflow_at=40), config, full)
    cut = _run(tmp_path / "cut")
    train(IndexedTask(overflow_at=40), config, cut, stop_after=9)
    train(IndexedTask(overflow_at=40), config, cut, resume=True)

    def lines(run):
        return [{k: v for k, v in m.items() if k != "examples_per_s"} for m in run.metrics()]

    assert lines(cut) == lines(full)
    scale = [(r["step"], r["loss_scale"], r["skipped_steps"]) for r in full.loop_records()]
    assert [(r["step"], r["loss_scale"], r["skipped_steps"]) for r in cut.loop_records()] == scale
    assert sum(s for _, _, s in scale) == 2                            # example 40 comes once an epoch
    a, b = _weights(full.path / "final"), _weights(cut.path / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- torch.compile -----------------------------------------------------------------------

def _compile_run(tmp_path, setting):
    task = ClusterTask(dropout=0.0, noise=0.0)
    config = _config(compile=setting)
    eager = _run(tmp_path / "eager")
    train(task, config.replace(compile=False), eager)
    cut = _run(tmp_path / "compiled")
    train(task, config, cut, stop_after=9)
    train(task, config, cut, resume=True)
    a, b = _weights(eager.path / "final"), _weights(cut.path / "final")
    assert sorted(a) == sorted(b) == sorted(task.build_model().state_dict())    # no `_orig_mod.` in the names
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    losses = lambda run: [m["loss"] for m in run.metrics() if m.get("split") != "val"]   # noqa: E731
    np.testing.assert_allclose(losses(cut), losses(eager), rtol=1e-4)


def test_a_compiled_run_saves_the_modules_own_names_and_resumes(tmp_path):
    # aot_eager traces forward and backward as inductor does, without its minute of C++ compiling
    _compile_run(tmp_path, "aot_eager")


@pytest.mark.slow
def test_an_inductor_compiled_run_saves_the_modules_own_names_and_resumes(tmp_path):
    _compile_run(tmp_path, True)        # ~50 s of compiling on 2 cores with a cold inductor cache


def test_compile_setting_and_flag():
    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    assert flag_train_settings(parser.parse_args(["--out", "r", "--compile"]))["compile"] is True
    assert "compile" not in flag_train_settings(parser.parse_args(["--out", "r"]))   # the file's setting stays
    assert TrainConfig.from_layers({"steps": 1}, {"compile": "aot_eager"}).compile == "aot_eager"
    with pytest.raises(ValueError, match="compile must be"):
        TrainConfig(steps=1, compile=1)


# ---- devices and random streams ----------------------------------------------------------

def test_the_device_a_rank_trains_on():
    assert DistEnv().torch_device == torch.device("cpu")
    assert DistEnv(device="cuda").torch_device == torch.device("cuda", 0)
    assert DistEnv(device="cuda", local_rank=2).torch_device == torch.device("cuda", 2)     # a Dask worker's card
    assert DistEnv(device="cuda:1").torch_device == torch.device("cuda", 1)                # asked by name
    assert DistEnv(device="cuda:1", rank=1, world_size=2, local_rank=3).torch_device == torch.device("cuda", 3)


def test_a_cpu_run_saves_no_cuda_random_stream():
    assert set(rng_state(torch.device("cpu"))) == {"torch", "numpy", "python"}
