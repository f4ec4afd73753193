"""Extraction bookkeeping a user relies on (issue 28.1-28.3): one run owns an output folder,
the summary counts what this run asked for, failure records follow the image (not the
spelling of its path), fixed images are retried on request, and a symlink loop in the image
folder is reported and skipped. Real images, the real tiny detector, real processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.extract import resolve_spec
from pipeline.features import FeatureStore, read_failures
from pipeline.features.lock import LOCK, store_lock
from pipeline.images import discover_images
from pipeline.stages.executor import InProcess
from pipeline.stages.extract import extract
from workflows.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _photo(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    base = rng.integers(0, 255, (6 + i % 3, 8, 3)).astype(np.uint8)
    return Image.fromarray(np.kron(base, np.ones((16, 16, 1), dtype=np.uint8)))


def _write_images(folder: Path, prefix: str, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _photo(i).save(folder / f"{prefix}{i:03d}.jpg")
    return [f"{prefix}{i:03d}" for i in range(n)]


@pytest.fixture(scope="module")
def spec():
    return resolve_spec("tiny", "random")


def _extract(images, out, spec, **kw):
    return extract(str(images), str(out), spec, InProcess(), shard_size=4, decode_threads=0, progress=False, **kw)


# -- 28.1: one run per output folder -------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import os, sys, time
    from pipeline.features.lock import store_lock
    with store_lock(sys.argv[1], "extract"):
        print("locked", flush=True)
        if sys.argv[2] == "crash":
            os.kill(os.getpid(), 9)
        time.sleep(60)
""")


def _hold_lock(out: Path, mode: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out), mode], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_store_being_written_by_another_process_is_refused_naming_it(tmp_path, spec):
    _write_images(tmp_path / "b", "b", 3)
    (tmp_path / "s").mkdir()
    holder = _hold_lock(tmp_path / "s", "hold")
    try:
        with pytest.raises(PipelineError, match="another run is writing this store") as err:
            _extract(tmp_path / "b", tmp_path / "s", spec)
        assert f"pid {holder.pid}" in str(err.value) and "extract started" in str(err.value)
        assert not list((tmp_path / "s").glob("shard-*"))             # refused before touching anything
    finally:
        holder.kill()
        holder.wait()
    summary = _extract(tmp_path / "b", tmp_path / "s", spec)           # the holder is gone: the lock is free
    assert (summary.images, summary.extracted, summary.failed) == (3, 3, 0)


def test_a_holder_killed_with_sigkill_leaves_no_lock_behind(tmp_path):
    (tmp_path / "s").mkdir()
    holder = _hold_lock(tmp_path / "s", "crash")
    assert holder.wait(timeout=30) == -signal.SIGKILL
    assert (tmp_path / "s" / LOCK).is_file()                          # the file stays, the lock does not
    with store_lock(tmp_path / "s", "extract"):
        record = json.loads((tmp_path / "s" / LOCK).read_text())
        assert record["pid"] == os.getpid()


@pytest.mark.slow
def test_two_concurrent_extract_commands_into_one_folder(tmp_path):
    """The reported case through the CLI: A runs, B starts into the same --out while A holds
    it; B is refused in one line naming A, A's summary counts A's images only."""
    _write_images(tmp_path / "A", "a", 24)
    _write_images(tmp_path / "B", "b", 12)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def command(folder: str) -> list[str]:
        return [sys.executable, "-m", "workflows.cli", "extract", "--images", str(tmp_path / folder), "--out",
                str(tmp_path / "S"), "--preset", "tiny", "--weights", "random", "--workers", "1",
                "--shard-size", "8", "--no-progress"]

    a = subprocess.Popen(command("A"), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "S" / LOCK).is_file() or not (tmp_path / "S" / LOCK).read_text():
        assert time.time() < deadline and a.poll() is None
        time.sleep(0.1)
    b = subprocess.run(command("B"), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, timeout=300)
    a_still_running = a.poll() is None
    a_err = a.communicate(timeout=600)[1]
    assert a_still_running, "A finished before B started: the case did not overlap"
    assert b.returncode == 1 and len(b.stderr.strip().splitlines()) == 1
    assert "another run is writing this store" in b.stderr and f"pid {a.pid}" in b.stderr
    assert a.returncode == 0 and "24/24 images in the store, 0 failed" in a_err
    assert sorted(FeatureStore(tmp_path / "S").image_ids) == [f"a{i:03d}" for i in range(24)]


# -- 28.2: failure records by image id, --retry-failed --------------------------------------------

def _break(path: Path) -> None:
    path.write_bytes(b"not a jpeg at all\n")


def test_failure_records_survive_another_spelling_of_the_folder_and_fixed_images_are_retried(
        tmp_path, spec, monkeypatch):
    ids = _write_images(tmp_path / "imgs", "img", 7)
    for i in (1, 5):
        _break(tmp_path / "imgs" / f"img{i:03d}.jpg")
    monkeypatch.chdir(tmp_path)
    first = _extract(Path("imgs"), Path("store"), spec)                # relative spelling
    assert (first.images, first.extracted, first.failed) == (7, 5, 2)
    assert "--retry-failed" in first.lines()[0]

    (tmp_path / "imgs").rename(tmp_path / "moved")                     # moved, absolute spelling
    again = _extract(tmp_path / "moved", tmp_path / "store", spec)
    assert (again.extracted, again.failed, again.shards_written) == (5, 2, 0)
    assert sorted(r["image_id"] for r in read_failures(tmp_path / "store")) == ["img001", "img005"]

    before = {p.name: pq.read_table(p) for p in sorted((tmp_path / "store").glob("shard-*.parquet"))}
    _photo(5).save(tmp_path / "moved" / "img005.jpg")                  # fixed in place
    not_asked = _extract(tmp_path / "moved", tmp_path / "store", spec)
    assert not_asked.failed == 2 and "re-run with --retry-failed" in not_asked.lines()[0]

    retried = _extract(tmp_path / "moved", tmp_path / "store", spec, retry_failed=True)
    assert (retried.retried, retried.extracted, retried.failed) == (2, 6, 1)
    assert "2 retried, 1 now stored" in retried.lines()[0]
    assert [r["image_id"] for r in read_failures(tmp_path / "store")] == ["img001"]
    store = FeatureStore(tmp_path / "store")
    assert sorted(store.image_ids) == [i for i in ids if i != "img001"]
    after = {p.name: pq.read_table(p) for p in sorted((tmp_path / "store").glob("shard-*.parquet"))}
    # shard 0 (img000-003) is untouched; shard 1 gains img005 in id order, its other rows unchanged
    assert after["shard-00000.parquet"].equals(before["shard-00000.parquet"])
    assert after["shard-00001.parquet"].column("image_id").to_pylist() == ["img004", "img005", "img006"]
    assert after["shard-00001.parquet"].take([0, 2]).equals(before["shard-00001.parquet"])


@pytest.mark.slow
def test_the_cli_passes_retry_failed_and_exits_1_while_failures_remain(tmp_path, capsys):
    _write_images(tmp_path / "imgs", "img", 2)
    _break(tmp_path / "imgs" / "img001.jpg")
    args = ["extract", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "s"), "--preset", "tiny",
            "--weights", "random", "--workers", "1", "--no-progress"]
    assert cli_main(args) == 1
    assert "1/2 images in the store, 1 failed" in capsys.readouterr().err
    _photo(1).save(tmp_path / "imgs" / "img001.jpg")
    assert cli_main([*args, "--retry-failed"]) == 0
    assert "2/2 images in the store, 0 failed (1 retried, 1 now stored)" in capsys.readouterr().err


# -- 28.3: symlink loops ---------------------------------------------------------------------------

def test_a_directory_symlink_loop_is_reported_once_and_skipped(tmp_path, caplog):
    zoo = tmp_path / "zoo"
    _write_images(zoo, "UPPER", 2)
    _write_images(zoo / "inner", "inner", 1)
    (zoo / "inner" / "dirloop").symlink_to(zoo, target_is_directory=True)   # back to an ancestor
    (zoo / "zalias").symlink_to(zoo / "inner", target_is_directory=True)    # a second path, not a loop
    with caplog.at_level(logging.WARNING, logger="pipeline.images"):
        entries = discover_images(zoo)
    assert [e.image_id for e in entries] == ["UPPER000", "UPPER001", "inner000"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert any("inner/dirloop: a symlink loop to" in w and w.endswith(f"{zoo}, already searched") for w in warnings)
    assert any("a second path to" in w for w in warnings)


# -- issue 25: a re-run's bookkeeping reads each shard once and hashes none it can trust --------------

def _manifest_shards(store: Path) -> list[dict]:
    return json.loads((store / "manifest.json").read_text())["shards"]


def test_a_rerun_reads_each_shards_ids_once_and_hashes_no_unchanged_shard(tmp_path, spec, monkeypatch):
    import pipeline.features.manifest as manifest
    from pipeline.features import finalize_store
    from pipeline.features.integrity import VERIFIED

    calls = {"ids": [], "hashed": []}
    for name, key in (("shard_image_ids", "ids"), ("file_sha256", "hashed")):
        real = getattr(manifest, name)
        monkeypatch.setattr(manifest, name, lambda path, *a, _real=real, _key=key, **kw:
                            calls[_key].append(Path(path).name) or _real(path, *a, **kw))
    _write_images(tmp_path / "imgs", "img", 10)
    store = tmp_path / "store"
    first = _extract(tmp_path / "imgs", store, spec)
    assert first.shards_written == 3
    assert calls["hashed"] == []                         # the writers' checksums are handed in
    written = _manifest_shards(store)
    past = store.stat().st_mtime - 3600                  # shards a user re-runs on are not seconds old
    for p in store.iterdir():
        os.utime(p, (past, past))
    FeatureStore(store)                                  # a reader hashed them once and stamped them
    calls["ids"].clear()
    again = _extract(tmp_path / "imgs", store, spec)
    assert (again.extracted, again.shards_written, again.shards_skipped) == (10, 0, 3)
    assert sorted(calls["ids"]) == [f"shard-0000{i}.parquet" for i in range(3)]     # once each
    assert calls["hashed"] == []
    assert _manifest_shards(store) == written
    monkeypatch.undo()
    (store / VERIFIED).unlink()                                              # the plain path: hash everything
    finalize_store(store, FeatureStore(store, verify="never").metadata)
    assert _manifest_shards(store) == written
