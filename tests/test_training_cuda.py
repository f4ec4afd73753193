"""The training loop on a CUDA GPU (skipped without one; `pytest -m cuda`, bench/device_check.sh).

What each test holds to, and why that tolerance:
- fp32 on CUDA follows the CPU run of the same tiny pretraining and VQA fine-tuning (dropout
  off, so the only randomness is the batches', drawn on the CPU): every logged loss within
  1e-3 relative. The
  two devices sum in other orders (~1e-6 per op); a wrong batch, mask or update shows as
  percents.
- bf16 on CUDA: every loss finite, and within 5% relative of the fp32 CUDA run (bf16 keeps
  ~3 significant digits; the first steps of a tiny model move the loss by far more than 5%).
- kill-and-resume on CUDA, in fp32, bf16 and fp16 (its gradient scaler in resume.pt): the
  losses and weights of the uninterrupted run, exactly when two uninterrupted runs agree
  exactly (deterministic algorithms asked for), else within 1e-4 (a lost dropout stream or
  data position moves them by ~1e-2).
- fused AdamW and BertAdam's multi-tensor update against the per-parameter loops: the same
  numbers to float32 rounding (assert_close's float32 defaults).
- the side-stream prefetch: the values and order of the host batches, however busy the GPU.
- torch.compile (inductor) on the tiny LXMERT: losses within 1e-3 relative of eager,
  checkpoints in the module's own names, and a resume that finishes the run.
- DDP over NCCL (two GPUs or more): the weights of one process with two accumulation steps.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS; read at its first use

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from pipeline.pretraining.options import PretrainOptions  # noqa: E402
from pipeline.stages.pretrain import prepare_pretraining  # noqa: E402
from pipeline.training import BertAdam, RunDir, TrainConfig, build_optimizer, train  # noqa: E402
from pipeline.training.checkpoint import load_resume  # noqa: E402
from pipeline.training.prefetch import DeviceBatches  # noqa: E402
from tests.helpers.pretrain_world import make_world  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("cuda-world"))


def _task(world, tmp_path_factory, dropout: bool):
    data, store = world
    options = PretrainOptions() if dropout else PretrainOptions(model=NO_DROPOUT)
    task, _ = prepare_pretraining(store, data, tmp_path_factory.mktemp("prepared") / "run", preset="tiny",
                                  options=options)
    return task


@pytest.fixture(scope="module")
def still_task(world, tmp_path_factory):
    """Tiny pretraining without dropout: CPU and GPU draw nothing else."""
    return _task(world, tmp_path_factory, dropout=False)


@pytest.fixture(scope="module")
def task(world, tmp_path_factory):
    """Tiny pretraining with dropout: resumes must continue the CUDA random stream."""
    return _task(world, tmp_path_factory, dropout=True)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)   # ops without a deterministic kernel warn
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _config(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=16, lr=1e-3, optimizer="bert", warmup=0.2, log_every=1, checkpoint_every=3,
                val_every=4, progress=False, seed=11, device="cuda")
    return TrainConfig(**{**base, **kw})


def _train(task, config, path, **kw) -> RunDir:
    run = RunDir(path)
    run.check_writable()
    train(task, config, run, **kw)
    return run


def _losses(run: RunDir) -> np.ndarray:
    return np.array([[m[k] for k in sorted(m) if k not in ("examples_per_s", "epoch", "lr", "step")]
                     for m in run.metrics() if m.get("split") != "val"])


def _weights(run: RunDir) -> dict[str, torch.Tensor]:
    return load_file(str(run.path / "final" / "model.safetensors"))


def test_fp32_on_cuda_follows_the_cpu_run(still_task, tmp_path):
    assert not torch.backends.cuda.matmul.allow_tf32     # fp32 means fp32 here (TF32 would differ ~1e-3)
    cpu = _train(still_task, _config(device="cpu"), tmp_path / "cpu")
    gpu = _train(still_task, _config(), tmp_path / "cuda")
    np.testing.assert_allclose(_losses(gpu), _losses(cpu), rtol=1e-3, atol=1e-6)
    a, b = _weights(cpu), _weights(gpu)
    assert a.keys() == b.keys() and all(b[k].device.type == "cpu" for k in b)
    for k in a:    # Adam moves a weight by at most ~lr a step, whatever the gradient's rounding
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2 * 1e-3 * 8)
    record = gpu.loop_records()[-1]
    assert 0 <= record["data_wait_share"] <= 1 and record["max_memory_gib"] > 0


def test_fp32_vqa_fine_tuning_on_cuda_follows_the_cpu_run(tmp_path):
    from pipeline.stages.finetune import FinetuneOptions, prepare_finetune
    from tests.helpers.finetune_world import make_world as finetune_world

    data, store = finetune_world(tmp_path / "world")
    options = FinetuneOptions(task="vqa", features=str(store), data=str(data), preset="tiny", model=NO_DROPOUT)
    config = TrainConfig(steps=6, batch_size=16, lr=2e-3, warmup=0.1, clip_norm=5.0, log_every=1, val_every=3,
                         optimizer="bert", progress=False, seed=5)
    runs = {device: _train(prepare_finetune(options, tmp_path / device), config.replace(device=device),
                           tmp_path / device) for device in ("cpu", "cuda")}
    np.testing.assert_allclose(_losses(runs["cuda"]), _losses(runs["cpu"]), rtol=1e-3, atol=1e-6)
    val = {d: [m for m in run.metrics() if m.get("split") == "val"] for d, run in runs.items()}
    assert [m["step"] for m in val["cuda"]] == [m["step"] for m in val["cpu"]] == [3, 6]
    np.testing.assert_allclose([m["loss"] for m in val["cuda"]], [m["loss"] for m in val["cpu"]], rtol=1e-3)


def test_bf16_on_cuda_is_finite_and_close_to_fp32(still_task, tmp_path):
    fp32 = _losses(_train(still_task, _config(), tmp_path / "fp32"))
    bf16 = _losses(_train(still_task, _config(precision="bf16"), tmp_path / "bf16"))
    assert np.isfinite(bf16).all()
    np.testing.assert_allclose(bf16, fp32, rtol=5e-2, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_killed_and_resumed_cuda_run_equals_the_uninterrupted_one(task, tmp_path, deterministic, precision):
    # one DataLoader worker: pinned batches from another process, copied on the side stream
    config = _config(precision=precision, num_workers=1)
    full = _train(task, config, tmp_path / "full")
    again = _train(task, config, tmp_path / "again")
    cut = _train(task, config, tmp_path / "cut", stop_after=5)     # last checkpoint: step 3
    state = load_resume(cut.latest_checkpoint())
    assert state["rng"]["cuda"].dtype == torch.uint8                # the CUDA stream is in resume.pt
    assert bool(state["scaler"]) == (precision == "fp16")           # and the fp16 scaler
    train(task, config, cut, resume=True)

    exact = np.array_equal(_losses(full), _losses(again))
    if exact:
        np.testing.assert_array_equal(_losses(cut), _losses(full))
    else:
        np.testing.assert_allclose(_losses(cut), _losses(full), rtol=0, atol=1e-4)
    a, b = _weights(full), _weights(cut)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0 if exact else 1e-4)
    vals = lambda run: [m for m in run.metrics() if m.get("split") == "val"]   # noqa: E731
    assert [m["step"] for m in vals(cut)] == [m["step"] for m in vals(full)] == [4, 8]


def _model(device) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(300, 64), torch.nn.Linear(64, 128), torch.nn.LayerNorm(128),
                               torch.nn.GELU(), torch.nn.Linear(128, 10)).to(device)


def _steps(optimizer, model, steps: int = 10) -> None:
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, device="cuda", generator=g)
        optimizer.step()


def test_fused_adamw_equals_the_unfused_one():
    settings = dict(lr=1e-2, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6)
    fused_model, loop_model = _model("cuda"), _model("cuda")
    fused = build_optimizer(fused_model, "adamw", **settings)
    assert fused.defaults["fused"]                                  # what the loop builds on CUDA
    loop = build_optimizer(loop_model, "adamw", fused=False, **settings)
    for group in loop.param_groups:
        group["foreach"] = False                                    # the plain per-parameter loop
    _steps(fused, fused_model)
    _steps(loop, loop_model)
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b)


def test_bert_adam_multi_tensor_update_equals_the_per_parameter_loop_on_cuda():
    multi_model, plain_model = _model("cuda"), _model("cuda")
    multi = BertAdam(multi_model.parameters(), lr=1e-2, max_grad_norm=1.0)
    plain = BertAdam(plain_model.parameters(), lr=1e-2, max_grad_norm=1.0, foreach=False)
    _steps(multi, multi_model)
    _steps(plain, plain_model)
    for a, b in zip(multi_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b)
    state = plain.state_dict()
    multi.load_state_dict(state)                                    # the state dicts are one format
    assert multi.state_dict()["state"].keys() == state["state"].keys()


def test_side_stream_prefetch_delivers_the_host_batches_in_order_while_the_gpu_is_busy():
    device = torch.device("cuda")
    expected = [torch.full((4096, 1024), float(i)).pin_memory() for i in range(6)]   # 16 MiB each
    batches = DeviceBatches(({"x": x, "i": i} for i, x in enumerate(expected)), device)
    busy = torch.randn(2048, 2048, device=device)
    seen = []
    for batch in batches:
        assert batch["x"].is_cuda and batches.stream != torch.cuda.current_stream(device)
        # read it at once on the training stream: without the stream wait this reads a half copy
        total = batch["x"].sum()
        for _ in range(20):
            busy = (busy @ busy).tanh()                             # keep the GPU busy while the next copies
        seen.append((batch["i"], float(total)))
    assert seen == [(i, float(x.sum())) for i, x in enumerate(expected)]


def test_a_compiled_cuda_run_follows_eager_and_resumes(still_task, tmp_path):
    config = _config(steps=6, checkpoint_every=3, val_every=None)
    eager = _train(still_task, config, tmp_path / "eager")
    compiled = _train(still_task, config.replace(compile=True), tmp_path / "compiled", stop_after=4)
    train(still_task, config.replace(compile=True), compiled, resume=True)
    np.testing.assert_allclose(_losses(compiled), _losses(eager), rtol=1e-3)
    assert sorted(_weights(compiled)) == sorted(_weights(eager))     # no `_orig_mod.` in the names


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_ddp_over_nccl_equals_one_process_with_accumulation(still_task, tmp_path):
    from pipeline.stages.training import train_run
    from tests.helpers.training_tasks import assert_same_weights
    from workflows.executors import DaskExecutor

    config = dict(steps=3, batch_size=32, lr=1e-3, optimizer="bert", warmup=0.0, log_every=1, progress=False,
                  seed=5, val_every=3, device="cuda")
    single = _train(still_task, TrainConfig(**config, grad_accum=2), tmp_path / "single")
    with DaskExecutor(workers=2, device="cuda") as executor:
        out = train_run(still_task, TrainConfig(**config), tmp_path / "ddp", executor, resume=False)
    assert out["step"] == 3
    assert_same_weights(single.path / "final", tmp_path / "ddp" / "final", atol=1e-5)
