"""A worker process SIGKILLed mid-run: the job completes and every image is stored exactly once.

A real LocalCluster of two process workers under nannies; the extraction attaches to it with
`scheduler=` (the --scheduler path). A watcher kills a worker that is busy with a shard as
soon as the first shard lands, from outside, as the OOM killer would.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from pipeline.extract import resolve_spec
from pipeline.features import FeatureStore, verify_store


def write_images(folder, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 255, (8, 10, 3)).astype(np.uint8)
        Image.fromarray(np.kron(base, np.ones((16, 16, 1), np.uint8))).save(folder / f"k{i:02d}.jpg")
    return [f"k{i:02d}" for i in range(n)]


def _kill_a_busy_worker(address: str, out_dir, state: dict, stop: threading.Event) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        while not stop.is_set():
            if any(out_dir.glob("shard-*.parquet")):
                busy = [w for w, tasks in client.processing().items() if tasks]
                if busy:
                    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    state["killed_pid"] = pid
                    return
            time.sleep(0.05)


@pytest.mark.slow
def test_killed_worker_job_completes_with_every_image_once(tmp_path):
    import dask
    from distributed import LocalCluster

    from pipeline.stages.extract import extract
    from workflows.executors import DaskExecutor

    ids = write_images(tmp_path / "imgs", 12)
    out = tmp_path / "store"
    spec = resolve_spec("tiny", "random")
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    state: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_a_busy_worker, args=(cluster.scheduler_address, out, state, stop))
    try:
        watcher.start()
        with DaskExecutor(scheduler=cluster.scheduler_address) as executor:
            summary = extract(str(tmp_path / "imgs"), str(out), spec, executor, shard_size=1, batch_size=1,
                              decode_threads=1, progress=False)
    finally:
        stop.set()
        watcher.join(timeout=30)
        cluster.close()
    assert "killed_pid" in state, "the watcher never found a busy worker to kill"
    assert summary.failed == 0 and summary.shards_total == 12
    store = FeatureStore(out)
    assert sorted(store.image_ids) == sorted(ids)               # all there, none twice
    assert len(store.image_ids) == len(set(store.image_ids)) == 12
    assert verify_store(out) == []
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
