"""Every stage's cost as the data grows: wall time, peak RSS, disk and the growth exponent.

    python bench/scale_world.py /tmp/scale/f64 --fraction 0.015625      # one world per fraction
    python bench/scale_world.py /tmp/scale/f16 --fraction 0.0625
    python bench/bench_scale.py /tmp/scale/f64 /tmp/scale/f16 [--stages prep,loader,...] [--json out.json]

Each (world, stage) runs in a fresh Python process, so its peak RSS (VmHWM) is its own;
DataLoader workers are measured by their private (unshared) memory from /proc/PID/smaps_rollup,
the pages no other process could share. The growth exponent is the least-squares slope of
log(cost) over log(size) across the worlds given: 1 is linear, 0 flat, 2 quadratic. On a shared
machine absolute seconds move with other people's work, so the load average is printed beside
every row, and only ratios within one run (the exponent) compare.

Stages (each a `measure_*` function; the size it is measured against in brackets):
- prep       pretraining data preparation: `prepare_pretraining` (json, example table,
             tokenising, RUN/data/), then what a later start pays: opening the prepared
             arrays and the store's index                                      [sentences]
- corpus     the corpus half of prep alone (every image taken as present): how the full-size
             corpus is measured without a full-size store                      [sentences]
- loader     the pretraining input pipeline: micro-batches of 64 from `EpochMicroBatches` through
             the training loop's DataLoader at 0/2/4/8 loader workers: examples/s, worker RSS [images]
- finetune   fine-tuning data at real counts: read + tokenise VQA train2014, GQA train balanced,
             NLVR2 train                                                       [questions]
- evaluate   `evaluate --predictions` on VQA val2014, GQA testdev-all (consistency), NLVR2 dev [questions]
- store      extraction bookkeeping: listing a folder of one empty file per image and cutting it
             into shards, an `extract` re-run's bookkeeping (the skip check over every shard,
             then `finalize_store`) the plain way and the way `extract` does it, `features
             verify`, opening the store (its index)                              [images]
- writer     the shard writer on one shard of the store's images (1000), plain and one-copy:
             seconds, table-building seconds, transient memory                  [images]
- checkpoint a `base` run's checkpoint (~210M parameters with the optimiser's state): building
             the model, loading and saving a checkpoint the way the training loop does, then
             `lxmert-pipeline pretrain --resume` in a fresh process: the seconds from its start
             to its first step                                                 [parameters]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("prep", "corpus", "loader", "finetune", "evaluate", "store", "writer", "checkpoint")
LOADER_WORKERS = (0, 2, 4, 8)
LOADER_BATCH = 64


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    child started from a big parent would report the parent's size."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def disk_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


class Rows:
    """The measurements of one child process, printed as one json line at its end."""

    def __init__(self, world: Path, stage: str):
        self.world, self.stage, self.rows = world, stage, []

    def add(self, step: str, size: int, seconds: float, **extra) -> None:
        self.rows.append({"stage": self.stage, "step": step, "size": size, "seconds": round(seconds, 3),
                          "rss_mb": round(peak_rss_mb(), 1), "load": load_average(), **extra})
        print(f"  {self.stage}/{step}: size {size}, {seconds:.2f} s, peak RSS {peak_rss_mb():.0f} MB, "
              f"load {load_average()} {extra or ''}", file=sys.stderr, flush=True)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def cpu_seconds() -> float:
    """CPU seconds (user + system, every thread) this process used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the stages (each runs in its own process) ---------------------------------------------------

def measure_prep(world: Path, rows: Rows) -> None:
    import shutil

    from pipeline.pretraining.examples import read_counts
    from pipeline.stages.pretrain import prepare_pretraining

    run = world / "bench" / "pretrain-run"
    shutil.rmtree(run, ignore_errors=True)
    run.parent.mkdir(parents=True, exist_ok=True)
    cpu = cpu_seconds()
    (task, summary), seconds = _timed(lambda: prepare_pretraining(
        world / "features", world / "data", run, preset="base", vocab=world / "data" / "vocab.txt"))
    counts = read_counts(run / "data" / "train")
    rows.add("prepare", counts.examples, seconds, cpu_s=round(cpu_seconds() - cpu, 1), images=counts.images,
             disk_mb=round(disk_mb(run / "data"), 1), missing_images=counts.missing_images)
    _write_loader_spec(world, run, world / "features")


def measure_prep_again(world: Path, rows: Rows) -> None:
    """A second `prepare_pretraining` into the prepared run (a run stopped after preparing, or
    during it, started again): complete steps are reused, not prepared again."""
    from pipeline.pretraining.examples import read_counts
    from pipeline.stages.pretrain import prepare_pretraining

    run = world / "bench" / "pretrain-run"
    def identity(path: Path) -> tuple[int, int]:   # a rewrite moves the mtime, even onto a reused inode
        return path.stat().st_ino, path.stat().st_mtime_ns

    before = {p: identity(p) for p in (run / "data").rglob("*.npy")}
    cpu = cpu_seconds()
    _, seconds = _timed(lambda: prepare_pretraining(
        world / "features", world / "data", run, preset="base", vocab=world / "data" / "vocab.txt"))
    rewritten = sum(1 for p, key in before.items() if identity(p) != key)
    rows.add("prepare again (complete: reused)", read_counts(run / "data" / "train").examples, seconds,
             cpu_s=round(cpu_seconds() - cpu, 1), arrays_rewritten=rewritten)


def _write_loader_spec(world: Path, run: Path, features: Path) -> None:
    """What the loader measurement needs to build the run's `PretrainingData` (plain json, so
    it survives renames of the training-job classes)."""
    from model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(run / "tokenizer", 20)
    spec = {"examples": str(run / "data" / "train"), "features": str(features), "vocab_size": tokenizer.vocab_size,
            "special_ids": {"pad": tokenizer.pad_id, "cls": tokenizer.cls_id, "sep": tokenizer.sep_id,
                            "mask": tokenizer.mask_id},
            "num_answers": len(json.loads((run / "answers.json").read_text()))}
    (world / "bench" / "loader.json").write_text(json.dumps(spec))


def measure_reopen(world: Path, rows: Rows) -> None:
    """What every later start pays instead (a resumed run, each DataLoader worker): open the
    prepared example table (memory maps) and the store's index."""
    from pipeline.features import FeatureStore
    from pipeline.pretraining.examples import ExampleTable

    run = world / "bench" / "pretrain-run"
    t0 = time.perf_counter()
    table = ExampleTable.load(run / "data" / "train")
    FeatureStore(world / "features")
    rows.add("open prepared data + store index", len(table), time.perf_counter() - t0)


def measure_corpus(world: Path, rows: Rows) -> None:
    """The corpus half of `prepare_pretraining` (read, filter, answer table, example table,
    tokenise, save) with every image taken as present: the full-size corpus without the
    27 GB store it would need. The same functions, in the same order, as the stage."""
    import shutil

    from model.tokenizer import load_tokenizer
    from pipeline.pretraining.examples import answer_table, build_examples, read_entries, source_names, usable_entries

    out = world / "bench" / "corpus-data"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    entries = read_entries(world / "data", "train")
    t_read = time.perf_counter() - t0
    sources = source_names(entries, None)
    usable, counts = usable_entries(entries, lambda image_id: True, sources)
    qa_sources = [s for s in sources if any(s in e.labelf for e in usable)]
    answers = answer_table(usable, qa_sources, 9500)
    tokenizer = load_tokenizer(world / "data" / "vocab.txt", 20)
    t1 = time.perf_counter()
    table = build_examples(usable, sources, tokenizer, answers, counts)
    t_build = time.perf_counter() - t1
    table.save(out, counts)
    seconds = time.perf_counter() - t0
    rows.add("corpus: read json", counts.examples, t_read)
    rows.add("corpus: example table + tokenise", counts.examples, t_build)
    rows.add("corpus: total (read .. save)", counts.examples, seconds, images=counts.images,
             disk_mb=round(disk_mb(out), 1))


def _private_mb(pid: int) -> tuple[float, float]:
    """(private MB, RSS MB) of a process: private pages are what this process alone holds."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024, fields.get("Rss", 0) / 1024


def measure_loader(world: Path, rows: Rows, workers: tuple[int, ...] = LOADER_WORKERS, batches: int = 24) -> None:
    import torch

    from pipeline.pretraining.data import PretrainingData
    from pipeline.pretraining.options import PretrainOptions
    from pipeline.training.batches import EpochMicroBatches

    torch.set_num_threads(1)
    spec = json.loads((world / "bench" / "loader.json").read_text())
    data = PretrainingData(spec["examples"], spec["features"], PretrainOptions(), vocab_size=spec["vocab_size"],
                           special_ids=spec["special_ids"], num_answers=spec["num_answers"])
    images = len(data.store)
    for n in workers:
        dataset = EpochMicroBatches(data, seed=0, epoch=1, batch_size=LOADER_BATCH, grad_accum=1, rank=0,
                                    world_size=1)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(len(dataset)), num_workers=n,
                                             generator=torch.Generator().manual_seed(0), persistent_workers=False,
                                             prefetch_factor=4 if n else None)
        it = iter(loader)
        warm = max(2, n)   # every worker has started and delivered once
        for _ in range(warm):
            next(it)
        t0 = time.perf_counter()
        cpu0 = _cpu_seconds(it, n)
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds(it, n) - cpu0
        private = [_private_mb(w.pid) for w in getattr(it, "_workers", [])]
        del it
        examples = batches * LOADER_BATCH
        rows.add(f"{n} loader workers", images, seconds, examples_per_s=round(examples / seconds, 1),
                 examples_per_cpu_s=round(examples / cpu, 1) if cpu > 0 else None,
                 worker_private_mb=round(max((p for p, _ in private), default=0.0), 1),
                 worker_rss_mb=round(max((r for _, r in private), default=0.0), 1))


def _cpu_seconds(it, n: int) -> float:
    """CPU seconds used so far by this process and its loader workers (what a core delivers)."""
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])] if n else [os.getpid()]
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure_finetune(world: Path, rows: Rows) -> None:
    from model.tokenizer import load_tokenizer
    from pipeline.finetune.data import _TokenisedExamples
    from pipeline.finetune.splits import read_gqa_split, read_nlvr2_split, read_vqa_split

    tokenizer = load_tokenizer(world / "data" / "vocab.txt", 20)
    data = world / "data"
    for name, read in (("VQA train2014", lambda: read_vqa_split(data, "train2014")),
                       ("GQA train balanced", lambda: read_gqa_split(data, "train")),
                       ("NLVR2 train", lambda: read_nlvr2_split(data, "train"))):
        examples, t_read = _timed(read)
        sentences = [e.sentence for e in examples]
        _, t_tok = _timed(lambda: _TokenisedExamples(sentences, tokenizer, world / "features", False))
        rows.add(f"{name} read", len(examples), t_read)
        rows.add(f"{name} tokenise", len(examples), t_tok)
        del examples, sentences


def measure_evaluate(world: Path, rows: Rows) -> None:
    import tempfile

    from pipeline.stages.evaluate import evaluate

    preds = world / "predictions"
    for task, split, path in (("vqa", "val2014", preds / "vqa_val2014.json"),
                              ("gqa", "testdev", preds / "gqa_testdev.json"),
                              ("nlvr2", "dev", preds / "nlvr2_dev.csv")):
        with tempfile.TemporaryDirectory() as out:
            (evaluation, _, _), seconds = _timed(lambda: evaluate(task, world / "data", split, predictions=path, out=out))
        size = len(evaluation.answers)
        extra = {"consistency": evaluation.metrics.get("consistency")} if task == "gqa" else {}
        rows.add(f"{task} {split}", size, seconds, accuracy=evaluation.metrics.get("accuracy",
                 evaluation.metrics.get("overall")), **extra)


def measure_store(world: Path, rows: Rows) -> None:
    from pipeline.features import FeatureStore, ShardReads
    from pipeline.features.integrity import VERIFIED
    from pipeline.features.manifest import finalize_store, load_manifest, verify_store
    from pipeline.features.schema import StoreMetadata
    from pipeline.images import discover_images
    from pipeline.stages.extract import _stored_shard_ids, cut_shards

    store = world / "features"
    manifest = load_manifest(store)
    n = manifest["num_images"]
    folder = world / "bench" / "images"
    if not folder.is_dir() or sum(1 for _ in folder.iterdir()) != n:
        import scale_world
        folder.mkdir(parents=True, exist_ok=True)
        for image_id in scale_world.image_ids(manifest_fraction(manifest)):
            (folder / f"{image_id}.jpg").touch()
    entries, seconds = _timed(lambda: discover_images(folder))
    shards, cut = _timed(lambda: cut_shards(entries, 1000))
    rows.add("list + shard the image folder", len(entries), seconds + cut)
    meta = StoreMetadata.from_dict(manifest["metadata"])

    def rerun(shared: bool) -> dict:
        """An extract re-run's bookkeeping on a complete store: the skip check of every shard,
        then finalize_store (extract.py). `shared`: the skip check's reads go to finalize_store."""
        reads = ShardReads()
        t0 = time.perf_counter()
        for i, shard in enumerate(shards):
            assert _stored_shard_ids(store, i, shard, meta, reads) is not None
        t1 = time.perf_counter()
        finalize_store(store, meta, (), reads if shared else None)
        return {"skip_check_s": round(t1 - t0, 2), "finalize_s": round(time.perf_counter() - t1, 2)}

    # plain, as before issue 25's fix: ids read again by finalize_store, and without a stamp to
    # vouch for them every shard is hashed (the old finalize_store hashed every shard not handed in)
    (store / VERIFIED).unlink(missing_ok=True)
    parts, seconds = _timed(lambda: rerun(False))
    rows.add("extract re-run bookkeeping, plain (ids twice, every shard hashed)", n, seconds, **parts)
    parts, seconds = _timed(lambda: rerun(True))
    rows.add("extract re-run bookkeeping (ids once, stamp vouches)", n, seconds, **parts)
    problems, seconds = _timed(lambda: verify_store(store))
    gb = sum(s["num_bytes"] for s in manifest["shards"]) / 1e9
    rows.add("features verify", n, seconds, gb=round(gb, 2), gb_per_s=round(gb / seconds, 2), problems=len(problems))
    _, seconds = _timed(lambda: FeatureStore(store))
    rows.add("open the store (index)", n, seconds)


def _plain_binary_array(arrays, dtype):
    """The shard writer's feature column before issue 25 (kept to compare): every array
    converted, copied to a bytes object, then copied again to join them."""
    import numpy as np
    import pyarrow as pa

    blobs = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
    sizes = np.fromiter((b.nbytes for b in blobs), dtype=np.int64, count=len(blobs))
    offsets = np.zeros(len(blobs) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    data = b"".join(np.ascontiguousarray(b).tobytes() for b in blobs)
    return pa.Array.from_buffers(pa.binary(), len(blobs), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def measure_shard_writer(world: Path, rows: Rows, images: int = 1000, repeats: int = 5) -> None:
    """`write_shard` of one shard of the store's images (float16, 36 x 2048), with the plain
    feature column and the one-copy one, alternated; best of `repeats` for the whole write and
    for building its Arrow table alone (where the copies are: `table_s`), and the transient
    memory of building the table (tracemalloc, a separate pass)."""
    import shutil
    import tempfile
    import tracemalloc

    import pipeline.features.shard as shard
    from pipeline.features import FeatureStore

    store = FeatureStore(world / "features")
    batch = store.get_many(store.image_ids[:images])
    one_copy = shard._binary_array
    variants = {"plain (2 copies)": _plain_binary_array, "one copy": one_copy}
    best = {name: float("inf") for name in variants}
    best_table = dict(best)
    sha = {}
    tmp = Path(tempfile.mkdtemp(dir=world / "bench"))
    try:
        shard.write_shard(tmp / "warm.parquet", batch, store.metadata)     # page in the source rows
        for _ in range(repeats):
            for name, binary in variants.items():
                shard._binary_array = binary
                info, seconds = _timed(lambda: shard.write_shard(tmp / f"{len(sha)}.parquet", batch, store.metadata))
                best[name] = min(best[name], seconds)
                sha.setdefault(name, info.sha256)
                _, seconds = _timed(lambda: shard.images_to_table(batch, store.metadata))
                best_table[name] = min(best_table[name], seconds)
        peaks = {}
        for name, binary in variants.items():
            shard._binary_array = binary
            tracemalloc.start()
            shard.images_to_table(batch, store.metadata)
            peaks[name] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    finally:
        shard._binary_array = one_copy
        shutil.rmtree(tmp, ignore_errors=True)
    same = len(set(sha.values())) == 1
    for name in variants:
        rows.add(f"write_shard {len(batch)} images, {name}", len(batch), best[name],
                 table_s=round(best_table[name], 3), table_transient_mb=round(peaks[name], 1), same_bytes=same)


def measure_checkpoint(world: Path, rows: Rows, preset: str = "base") -> None:
    """A run of `preset` with one step and its checkpoint (prepared from the world's corpus,
    without a validation split so nothing but the step runs), then, in this process, what the
    training loop does with a checkpoint: load it (weights, optimiser, schedule), save one."""
    import shutil

    from pipeline.stages.executor import InProcess
    from pipeline.stages.pretrain import pretrain, resumed_task
    from pipeline.training import RunDir, TrainConfig
    from pipeline.training.checkpoint import load_resume, load_weights, rng_state, save_resume
    from pipeline.training.optim import build_optimizer
    from pipeline.training.schedule import warmup_linear_schedule

    run, data = world / "bench" / "checkpoint-run", _checkpoint_data(world)
    shutil.rmtree(run, ignore_errors=True)
    _, first = _timed(lambda: pretrain(world / "features", data, run, InProcess(), preset=preset,
                                       vocab=world / "data" / "vocab.txt", layers=[CHECKPOINT_RUN]))
    run_dir = RunDir(run)
    ckpt = run_dir.latest_checkpoint()
    task = resumed_task(run_dir)
    config = TrainConfig.from_layers(run_dir.read_config()["train"])
    model, t_build = _timed(task.build_model)
    params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                betas=config.betas, eps=config.eps)
    scheduler = warmup_linear_schedule(optimizer, config.warmup, 1)

    def load() -> dict:
        load_weights(model, ckpt)
        state = load_resume(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return state

    state, t_load = _timed(load)

    def write(directory: Path) -> None:   # the training loop's checkpoint writer
        task.save_model(model, directory)
        save_resume(directory, step=state["step"], epoch=state["epoch"], total_steps=state["total_steps"],
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=state["scaler"],
                    rng=rng_state())

    saved, t_save = _timed(lambda: run_dir.save_checkpoint(10**6, write, keep=0))
    size = round(disk_mb(saved), 1)
    shutil.rmtree(saved)
    (world / "bench" / "checkpoint.json").write_text(json.dumps({"parameters": params, "preset": preset}))
    rows.add("first run: prepare + 1 step + checkpoint", params, first)
    rows.add("build the model", params, t_build)
    rows.add("load checkpoint (weights + optimiser state)", params, t_load, disk_mb=size)
    rows.add("save checkpoint", params, t_save, disk_mb=size)


CHECKPOINT_RUN = dict(steps=1, batch_size=2, checkpoint_every=1, log_every=1, progress=False, num_workers=0,
                      precision="fp32")


def _checkpoint_data(world: Path) -> Path:
    """The world's training json without its validation file (a run that only steps)."""
    data = world / "bench" / "checkpoint-data"
    (data / "lxmert").mkdir(parents=True, exist_ok=True)
    for name in ("mscoco_train", "mscoco_nominival", "vgnococo"):
        link = data / "lxmert" / f"{name}.json"
        if not link.exists():
            link.symlink_to(world / "data" / "lxmert" / f"{name}.json")
    return data


def measure_resume(world: Path, rows: Rows, timeout_s: float = 1800) -> None:
    """`lxmert-pipeline pretrain --resume` on the checkpoint run, one more step, in a fresh
    process (as a user or a scheduler restarts it): seconds from its start to the step's
    metrics line, and how much of that the step itself took (its logged examples/s)."""
    run, data = world / "bench" / "checkpoint-run", _checkpoint_data(world)
    metrics = run / "metrics.jsonl"
    step = max(json.loads(line)["step"] for line in metrics.read_text().splitlines())
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "workflows.cli", "pretrain", "--features", str(world / "features"),
               "--data", str(data), "--out", str(run), "--resume", "--steps", str(step + 1), "--workers", "1",
               "--no-progress"]
    log_path = world / "bench" / "resume.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=log,
                                stderr=subprocess.STDOUT)
    line = None
    while line is None:
        if proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
            break
        time.sleep(0.05)
        line = next((x for x in map(_json_or_none, metrics.read_text().splitlines())
                     if x and x.get("step") == step + 1 and x.get("split") != "val"), None)
    first_step = time.perf_counter() - t0
    code = proc.wait(timeout=timeout_s)
    total = time.perf_counter() - t0
    if line is None or code != 0:
        raise RuntimeError(f"pretrain --resume failed (exit {code}); see {log_path}")
    step_s = CHECKPOINT_RUN["batch_size"] / line["examples_per_s"]
    params = json.loads((world / "bench" / "checkpoint.json").read_text())["parameters"]
    rows.add("pretrain --resume: start to first step logged", params, first_step,
             step_s=round(step_s, 2), startup_s=round(first_step - step_s, 2), exit_s=round(total, 2))


def manifest_fraction(manifest: dict) -> float:
    import scale_world
    return manifest["num_images"] / scale_world.REAL["store_images"]


def _json_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except ValueError:   # a line being written
        return None


MEASURES = {"prep": (measure_prep, measure_reopen, measure_prep_again), "corpus": (measure_corpus,),
            "loader": (measure_loader,), "finetune": (measure_finetune,), "evaluate": (measure_evaluate,),
            "store": (measure_store,), "writer": (measure_shard_writer,),
            "checkpoint": (measure_checkpoint, measure_resume)}


def run_child(world: Path, stage: str, step: int) -> None:
    import logging
    logging.basicConfig(level=logging.WARNING)
    rows = Rows(world, stage)
    MEASURES[stage][step](world, rows)
    print("ROWS " + json.dumps(rows.rows), flush=True)


# -- the parent: one child per (world, stage, step), then the table -----------------------------

def growth(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(value) over log(size); None under two distinct sizes."""
    pts = [(math.log(s), math.log(v)) for s, v in points if s > 0 and v and v > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def table(rows: list[dict]) -> str:
    lines = ["| stage | step | sizes | seconds | peak RSS MB | load (1/5/15) | time exp. | RSS exp. | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        keys.setdefault((r["stage"], r["step"]), []).append(r)
    for (stage, step), rs in keys.items():
        rs.sort(key=lambda r: r["size"])
        t_exp = growth([(r["size"], r["seconds"]) for r in rs])
        m_exp = growth([(r["size"], r["rss_mb"]) for r in rs])
        extra = {k: [r.get(k) for r in rs] for k in rs[0]
                 if k not in ("stage", "step", "size", "seconds", "rss_mb", "load", "world")}
        if all(r.get("cpu_s") for r in rs):   # CPU time: the growth a shared machine's wall time blurs
            cpu_exp = growth([(r["size"], r["cpu_s"]) for r in rs])
            if cpu_exp is not None:
                extra["cpu_exp"] = round(cpu_exp, 2)
        sizes = " / ".join(str(r["size"]) for r in rs)
        seconds = " / ".join(f"{r['seconds']:.2f}" for r in rs)
        rss = " / ".join(f"{r['rss_mb']:.0f}" for r in rs)
        loads = " ; ".join(r["load"] for r in rs)
        t_text = "" if t_exp is None else f"{t_exp:.2f}"
        m_text = "" if m_exp is None else f"{m_exp:.2f}"
        lines.append(f"| {stage} | {step} | {sizes} | {seconds} | {rss} | {loads} | {t_text} | {m_text} | "
                     f"{json.dumps(extra) if extra else ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("worlds", nargs="*", help="directories written by bench/scale_world.py")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--json", help="append every row to this json-lines file too")
    p.add_argument("--table", metavar="JSONL", nargs="+",
                   help="print the table of rows saved by earlier runs' --json instead of measuring")
    p.add_argument("--child", nargs=3, metavar=("WORLD", "STAGE", "STEP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        run_child(Path(args.child[0]), args.child[1], int(args.child[2]))
        return 0
    if args.table:
        rows = [json.loads(line) for path in args.table for line in open(path) if line.strip()]
        print(table(rows))
        return 0
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad or not args.worlds:
        p.error(f"unknown stages {bad}" if bad else "give at least one world")
    from machine_info import machine_line
    print(machine_line())
    rows: list[dict] = []
    for stage in stages:
        for world in args.worlds:
            for step in range(len(MEASURES[stage])):
                proc = subprocess.run([sys.executable, __file__, "--child", world, stage, str(step)],
                                      stdout=subprocess.PIPE, text=True)
                found = [line for line in proc.stdout.splitlines() if line.startswith("ROWS ")]
                if proc.returncode or not found:
                    print(f"# {stage} on {world}: failed (exit {proc.returncode})", file=sys.stderr)
                    continue
                new = json.loads(found[-1][5:])
                for r in new:
                    r["world"] = world
                rows += new
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.writelines(json.dumps(r) + "\n" for r in new)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
