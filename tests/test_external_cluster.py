"""A Dask cluster as users run one: `dask scheduler` on 127.0.0.1 and stock `dask worker`
processes, each started from its own folder with its own local directory (as on separate
hosts), and the project's commands or executor attached with `--scheduler` from a third
folder. Real processes and files; no GPU (GPU workers advertise `--resources GPU=1` and
`CUDA_VISIBLE_DEVICES`, and the tests read the choices made, never using CUDA).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.stages.executor import PerWorker, ShardFailed
from pipeline.stages.training import train_run
from pipeline.training import RunDir, TrainConfig
from tests.helpers.training_tasks import ClusterTask
from workflows.executors import DaskExecutor, gpu_plan, rank_threads, this_worker_gpu

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExternalCluster:
    """A scheduler and workers as separate processes, each in its own folder under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        folder = self.root / name
        folder.mkdir(parents=True)
        # PYTHONPATH: the workers unpickle this file's helpers; nothing else of the repo's
        # folder is visible to them (their cwd is their own folder)
        environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        log = open(folder / "log.txt", "w")
        self.procs[name] = subprocess.Popen([str(BIN / "dask"), *args], cwd=folder, env=environ, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def worker(self, name: str, *options: str, env: dict[str, str] | None = None, nthreads: int = 1) -> None:
        self._spawn(name, ["worker", self.address, "--name", name, "--nthreads", str(nthreads), "--no-dashboard",
                           "--local-directory", str(self.root / name / "dask-local"), *options], env)

    def wait_for(self, n: int) -> dict[str, str]:
        """{worker name: address} once `n` workers are up."""
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n, timeout=120)
            return {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}

    def client(self):
        from distributed import Client

        return Client(self.address, timeout="60s")

    def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = ExternalCluster(tmp_path / "cluster")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Three stock workers: two GPU workers with their own CUDA_VISIBLE_DEVICES, one CPU
    worker with two threads; and the client's folder."""
    root = tmp_path_factory.mktemp("mixed")
    c = ExternalCluster(root / "cluster")
    try:
        c.worker("gpu0", "--resources", "GPU=1", env={"CUDA_VISIBLE_DEVICES": "0"})
        c.worker("gpu1", "--resources", "GPU=1", env={"CUDA_VISIBLE_DEVICES": "1"})
        c.worker("cpu", nthreads=2)
        c.names = c.wait_for(3)
        c.home = root / "client"
        c.home.mkdir()
        yield c
    finally:
        c.close()


def lxmert(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lxmert-pipeline"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def write_images(folder: Path, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 255, (8, 10, 3)).astype(np.uint8)
        Image.fromarray(np.kron(base, np.ones((16, 16, 1), np.uint8))).save(folder / f"c{i:02d}.jpg")
    return [f"c{i:02d}" for i in range(n)]


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=4, batch_size=12, lr=1e-2, warmup=0.0, log_every=1, optimizer="adamw",
                                 progress=False, seed=3), **kw})


# ---- 6. torch threads on stock workers (first: it needs a worker no rank has used) -------

def test_a_rank_uses_as_many_torch_threads_as_its_worker_has(mixed):
    import torch

    cpu = mixed.names["cpu"]
    with mixed.client() as client:
        # first on this worker (file order): a stock worker starts torch with one thread
        assert client.run(torch.get_num_threads, workers=[cpu])[cpu] == 1
        # what the rank's own thread (a task thread) computes with
        assert client.submit(rank_threads, workers=[cpu], pure=False).result() == 2


# ---- 1. paths ------------------------------------------------------------------------------

def test_extract_with_relative_paths_from_another_folder_stores_every_image_in_the_clients_store(mixed):
    home = mixed.home / "extract"
    ids = write_images(home / "imgs", 6)
    done = lxmert("extract", "--images", "imgs", "--out", "store", "--preset", "tiny", "--weights", "random",
                  "--shard-size", "2", "--no-progress", "--scheduler", mixed.address, cwd=home)
    assert done.returncode == 0, done.stderr[-2000:]
    from pipeline.features import FeatureStore

    assert sorted(FeatureStore(home / "store").image_ids) == ids
    assert not list(mixed.root.glob("*/store"))      # nothing written in the workers' folders


def test_a_path_a_worker_cannot_see_fails_in_one_line_naming_the_worker_and_the_path(mixed, monkeypatch):
    monkeypatch.chdir(mixed.home)
    (mixed.home / "seen-here-only").mkdir(exist_ok=True)
    with DaskExecutor(scheduler=mixed.address) as executor:
        executor.check_paths(read=[str(mixed.home / "seen-here-only")], write=[str(mixed.home)])
        # a relative path means another folder on each worker: exactly what a shared mount avoids
        with pytest.raises(PipelineError) as err:
            executor.check_paths(read=["seen-here-only"])
        assert "does not see the input" in str(err.value) and "seen-here-only" in str(err.value)
        assert any(address in str(err.value) for address in mixed.names.values())
        assert "\n" not in str(err.value)
        with pytest.raises(PipelineError, match="does not see the output folder"):
            executor.check_paths(write=["seen-here-only"])
    assert [p.name for p in (mixed.home / "seen-here-only").iterdir()] == []   # no probe left behind


# ---- 4, 5. ranks by resource, each GPU worker its own card, the batch split before launch -----

def test_cuda_ranks_are_the_gpu_workers_each_on_its_own_card_and_workers_limits_them(mixed):
    names = mixed.names
    with DaskExecutor(scheduler=mixed.address) as executor:
        ranks = executor.ranks(_config(device="cuda"))
        assert [addr for addr, _host, _index in ranks] == sorted([names["gpu0"], names["gpu1"]])
        # each sees one card (its own CUDA_VISIBLE_DEVICES) as cuda:0: DDP's set_device(0) on both
        assert [index for *_, index in ranks] == [0, 0]
        plan = gpu_plan(executor.client, [names["gpu0"], names["gpu1"]])
        assert plan == {names["gpu0"]: (0, "0"), names["gpu1"]: (0, "1")}
        assert len(executor.ranks(_config())) == 3                    # on CPU every worker is a rank
        # a stage that trains inside its node's worker (the run graph's fine-tunings) uses that card too
        on = {n: executor.client.submit(this_worker_gpu, workers=[names[n]], pure=False).result()
              for n in ("gpu0", "gpu1")}
        assert on == {"gpu0": (0, "0"), "gpu1": (0, "1")}
    with DaskExecutor(scheduler=mixed.address, workers=1) as executor:
        assert len(executor.ranks(_config(device="cuda"))) == 1


def test_a_batch_that_does_not_split_over_the_ranks_is_refused_before_launch(mixed):
    out = mixed.home / "uneven"
    with DaskExecutor(scheduler=mixed.address) as executor, pytest.raises(PipelineError) as err:
        train_run(ClusterTask(), _config(batch_size=16), out, executor, resume=False)
    assert "batch size 16 does not split over 3 rank(s)" in str(err.value)
    assert "--batch-size 15 or 18" in str(err.value) and "--resume" not in str(err.value)
    assert not (out / "config.yaml").exists() and not (out / "metrics.jsonl").exists()


# ---- 8 and 4: a resume before the first checkpoint; the world size recorded -------------------

def test_a_resume_with_no_checkpoint_yet_logs_each_step_once_and_another_world_size_is_said(mixed, caplog):
    out = mixed.home / "early"
    config = _config(steps=6, checkpoint_every=100)
    with DaskExecutor(scheduler=mixed.address) as executor:
        train_run(ClusterTask(), config, out, executor, resume=False, stop_after=3)
    assert RunDir(out).latest_checkpoint() is None
    assert yaml.safe_load((out / "config.yaml").read_text())["world_size"] == 3
    with DaskExecutor(scheduler=mixed.address, workers=2) as executor, caplog.at_level("WARNING"):
        result = train_run(ClusterTask(), config, out, executor, resume=True)
    assert result["step"] == 6
    assert [m["step"] for m in RunDir(out).metrics() if m.get("split") != "val"] == [1, 2, 3, 4, 5, 6]
    assert "resuming on 2 rank(s); the run was started on 3" in caplog.text


# ---- 6. stock (daemonic, one-thread) workers ---------------------------------------------------

def test_loader_workers_on_daemonic_workers_are_refused_before_launch_naming_the_worker_option(mixed):
    out = mixed.home / "loaders"
    with DaskExecutor(scheduler=mixed.address) as executor, pytest.raises(PipelineError) as err:
        train_run(ClusterTask(), _config(num_workers=1), out, executor, resume=False)
    assert "is daemonic" in str(err.value) and "--no-nanny" in str(err.value)
    assert not (out / "config.yaml").exists()      # nothing started: the same command works once fixed


# ---- 3 and 7: the per-worker extractor; a GPU task with no GPU worker left --------------------

def _build_marker(folder: str) -> str:
    Path(folder, f"built-{os.getpid()}").touch()
    return "resource"


def _echo(item, resource, *, fail_on=None, pause=0.0):
    time.sleep(pause)
    if item == fail_on:
        raise ValueError(f"item {item} is bad")
    return item, resource


def _holds(key: str, dask_worker=None) -> bool:
    from workflows import executors

    return key in dask_worker.plugins or key in executors._PROCESS_CACHE


def test_the_resource_is_built_only_on_gpu_workers_and_dropped_after_a_failed_map(mixed, tmp_path):
    names = mixed.names
    marks = tmp_path / "marks"
    marks.mkdir()
    resource = PerWorker("test-resource", functools.partial(_build_marker, str(marks)))
    with DaskExecutor(scheduler=mixed.address) as executor:
        pids = executor.client.run(os.getpid)
        with pytest.raises(ShardFailed):
            for _ in executor.map_shards(functools.partial(_echo, fail_on=2), list(range(4)), per_worker=resource,
                                         gpu=True):
                pass
        built = {p.name for p in marks.iterdir()}
        assert built and built <= {f"built-{pids[names[n]]}" for n in ("gpu0", "gpu1")}
        assert executor.client.run(_holds, "test-resource") == {a: False for a in names.values()}


@pytest.mark.slow   # its own cluster, one worker of which is killed: ~30 s
def test_a_gpu_map_whose_gpu_workers_are_gone_fails_after_a_bounded_wait(cluster):
    cluster.worker("cpu")
    cluster.worker("gpu", "--no-nanny", "--resources", "GPU=1", env={"CUDA_VISIBLE_DEVICES": "0"})
    cluster.wait_for(2)
    outcome: dict = {}

    def consume():
        try:
            with DaskExecutor(scheduler=cluster.address, resource_wait_s=3) as executor:
                for n, _ in enumerate(executor.map_shards(functools.partial(_echo, pause=1.0), list(range(6)),
                                                          per_worker=PerWorker("k", str), gpu=True)):
                    if n == 0:
                        cluster.procs["gpu"].kill()     # the only GPU worker leaves for good
        except PipelineError as err:
            outcome["error"] = str(err)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=90)
    assert not worker.is_alive(), "the map still waits for a GPU worker"
    assert "no Dask worker with the GPU resource for 3 s" in outcome["error"]


# ---- 2 (and 1 for pretrain): Ctrl-C cancels the ranks; --resume continues ------------------

@pytest.mark.slow
def test_ctrl_c_stops_the_ranks_and_resume_finishes_a_run_started_with_relative_paths(cluster, tmp_path):
    from tests.helpers.pretrain_world import make_world

    cluster.worker("w1")
    cluster.worker("w2")
    cluster.wait_for(2)
    home = tmp_path / "client"
    make_world(home, images=60)
    common = ["pretrain", "--features", "features", "--data", "world", "--out", "run", "--preset", "tiny",
              "--batch-size", "16", "--checkpoint-every", "2", "--log-every", "1", "--no-progress",
              "--scheduler", cluster.address]
    proc = subprocess.Popen([str(BIN / "lxmert-pipeline"), *common, "--steps", "2000"], cwd=home,
                            stderr=subprocess.PIPE, text=True)
    run = RunDir(home / "run")
    deadline = time.monotonic() + 300
    while run.latest_checkpoint() is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.latest_checkpoint() is not None, proc.stderr.read() if proc.poll() is not None else "no checkpoint"
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, stderr[-2000:]
    assert "stopped the 2 training rank(s)" in stderr
    written = (len(run.metrics()), [p.name for p in run.checkpoints()])
    time.sleep(8)
    assert (len(run.metrics()), [p.name for p in run.checkpoints()]) == written     # nobody trains on
    assert not (home / "run" / "final").exists()
    cluster.wait_for(2)                                                             # the restarted workers
    resumed = lxmert(*common, "--steps", str(int(written[1][-1].split("-")[1]) + 4), "--resume", cwd=home)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (home / "run" / "final" / "model.safetensors").is_file()
    steps = [m["step"] for m in run.metrics() if m.get("split") != "val"]
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_run_with_a_relative_config_from_another_folder_extracts_into_the_clients_folder(cluster, tmp_path):
    cluster.worker("w1")
    cluster.worker("w2")
    cluster.wait_for(2)
    home = tmp_path / "client"
    ids = write_images(home / "world" / "images", 4)
    (home / "pipeline.yaml").write_text(yaml.safe_dump(
        {"data": "world", "out": "out", "extract": {"preset": "tiny", "weights": "random", "shard_size": 2}}))
    done = lxmert("run", "--config", "pipeline.yaml", "--scheduler", cluster.address, cwd=home)
    assert done.returncode == 0, done.stderr[-2000:]
    from pipeline.features import FeatureStore

    assert sorted(FeatureStore(home / "out" / "features").image_ids) == ids
