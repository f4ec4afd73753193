"""Timing probe (issue 25): the pretraining loader before and after shipping float16 features.

"before" is the loader as of commit e0cdf03 (`pipeline/inputs/visual.py`,
`pipeline/pretraining/masking.py` and `data.py` read from git and loaded beside the current
code): features converted to float32 on the CPU, masked there, and sent twice (masked, and
unmasked as `feat_targets`). "after" is the current code: the store's float16 features
gathered once, the masks drawn on the CPU and applied by the job on the device
(`pipeline.pretraining.data.model_batch`).

In one process, on a world of `bench/scale_world.py` whose pretraining data `bench/bench_scale.py
--stages prep` has prepared (it writes WORLD/bench/loader.json), at batch 64, the variants
interleaved round by round (medians):

  - make_batch   in this process: examples/s and examples per CPU-second;
  - N workers    the training loop's DataLoader over `EpochMicroBatches` with N workers; the
                 main process copies every tensor of each batch once into a reused buffer, as
                 pin_memory does on a GPU machine; CPU of the main process and its workers;
  - model_batch  the masking that moved to the device, timed here on the CPU (on a GPU it is
                 a masked_fill and an index_copy over ~9 MB);

and first checks that both give the model the same inputs: the masked features and targets
(float32) and every other tensor of the first batches, bit for bit.

    python bench/scale_world.py /tmp/scale/f64 --fraction 0.015625 --parts store,corpus
    python bench/bench_scale.py /tmp/scale/f64 --stages prep
    python research/probe_loader_float16.py /tmp/scale/f64 [--batches 40] [--rounds 3] [--workers 0,2]

Measured 2026-12-02 on the shared 2-core EPYC (load ~4), 40 batches x 3 rounds
(research/2026-12-02-loader-float16.md):

  | measure | before ex/s | after ex/s | before ex/CPU-s | after ex/CPU-s | ratio (CPU) |
  | make_batch | 2,013 | 14,833 | 2,020 | 14,834 | 7.3x |
  | 1 workers | 815 | 3,122 | 723 | 2,667 | 3.7x |
  | 2 workers | 688 | 2,443 | 637 | 2,667 | 4.2x |
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_scale import _cpu_seconds  # noqa: E402
from pipeline.pretraining.data import PretrainingData, model_batch  # noqa: E402
from pipeline.pretraining.options import PretrainOptions  # noqa: E402
from pipeline.training.batches import EpochMicroBatches  # noqa: E402

BEFORE = "e0cdf03"
BATCH = 64


def legacy_data_class(commit: str = BEFORE):
    """`PretrainingData` as it was at `commit`, with the `read_visual` and masking of then."""
    def load(name: str, path: str, replace: dict[str, str]):
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True,
                                capture_output=True, text=True).stdout
        for old, new in replace.items():
            if old not in source:
                raise SystemExit(f"{path} at {commit} has no {old!r}")
            source = source.replace(old, new)
        spec = importlib.util.spec_from_loader(name, loader=None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module       # DataLoader workers unpickle by module name
        exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
        return module

    load("legacy_visual", "pipeline/inputs/visual.py", {})
    load("legacy_masking", "pipeline/pretraining/masking.py", {})
    data = load("legacy_data", "pipeline/pretraining/data.py", {
        "from pipeline.inputs.visual import": "from legacy_visual import",
        "from pipeline.pretraining.masking import": "from legacy_masking import"})
    return data.PretrainingData


def sources(world: Path) -> dict[str, object]:
    spec = json.loads((world / "bench" / "loader.json").read_text())
    args = (spec["examples"], spec["features"], PretrainOptions())
    kw = dict(vocab_size=spec["vocab_size"], special_ids=spec["special_ids"], num_answers=spec["num_answers"])
    return {"before": legacy_data_class()(*args, **kw), "after": PretrainingData(*args, **kw)}


def micro_batches(data) -> EpochMicroBatches:
    return EpochMicroBatches(data, seed=0, epoch=1, batch_size=BATCH, grad_accum=1, rank=0, world_size=1)


def check_identical(data: dict[str, object], batches: int = 4) -> None:
    """The model's inputs, both ways, bit for bit (the after batch through `model_batch`)."""
    before, after = micro_batches(data["before"]), micro_batches(data["after"])
    for j in range(batches):
        old, new = before[j], model_batch(after[j])
        assert new["feat_targets"].dtype == torch.float16 and old["visual_feats"].dtype == torch.float32
        assert old.keys() == new.keys(), old.keys() ^ new.keys()
        for k in old:
            value = new[k].float() if k in ("visual_feats", "feat_targets") else new[k]
            assert old[k].dtype == value.dtype and torch.equal(old[k], value), (j, k)
    print(f"identical model inputs (every tensor, {batches} batches of {BATCH}): yes")


def time_make_batch(data, start: int, batches: int) -> tuple[float, float]:
    """(examples/s, examples per CPU-second) of `make_batch` in this process."""
    items = micro_batches(data)
    items[start]                                   # the store's pages of this process are mapped
    cpu, wall = time.process_time(), time.perf_counter()
    for j in range(start + 1, start + 1 + batches):
        items[j]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return batches * BATCH / wall, batches * BATCH / cpu


def _consume(batch: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
    """Read every tensor once into a reused buffer: what pin_memory's copy costs the main process."""
    for k, v in batch.items():
        raw = v.reshape(-1).view(torch.uint8)
        if k not in buffers or buffers[k].numel() < raw.numel():
            buffers[k] = torch.empty(raw.numel() * 2, dtype=torch.uint8)
        buffers[k][:raw.numel()].copy_(raw)


def time_workers(data, workers: int, start: int, batches: int) -> tuple[float, float]:
    """(examples/s, examples per CPU-second) through the training loop's DataLoader."""
    items = micro_batches(data)
    loader = torch.utils.data.DataLoader(items, batch_size=None, sampler=range(start, len(items)),
                                         num_workers=workers, generator=torch.Generator().manual_seed(0),
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(loader)
    buffers: dict[str, torch.Tensor] = {}
    for _ in range(max(2, workers)):              # every worker has started and delivered once
        _consume(next(it), buffers)
    cpu, wall = _cpu_seconds(it, workers), time.perf_counter()
    for _ in range(batches):
        _consume(next(it), buffers)
    cpu, wall = _cpu_seconds(it, workers) - cpu, time.perf_counter() - wall
    del it
    return batches * BATCH / wall, batches * BATCH / cpu


def time_model_batch(data, batches: int) -> float:
    """CPU seconds per batch of the masking that moved to the device, when the device is the CPU."""
    items = [micro_batches(data)[j] for j in range(batches)]
    cpu = time.process_time()
    for batch in items:
        model_batch(batch)
    return (time.process_time() - cpu) / batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("world", type=Path,
                        help="a world of bench/scale_world.py, prepared by bench_scale --stages prep")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="0,2",
                        help="DataLoader worker counts (make_batch in this process is always measured)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = sources(args.world)
    check_identical(data)
    workers = [int(w) for w in args.workers.split(",") if w]
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in range(args.rounds):
        start = 10 + r * (args.batches + 10)      # other batches each round, the same for both
        for name in ("make_batch", *(f"{n} workers" for n in workers if n)):
            for variant in ("before", "after"):
                n = 0 if name == "make_batch" else int(name.split()[0])
                got = (time_make_batch(data[variant], start, args.batches) if n == 0
                       else time_workers(data[variant], n, start, args.batches))
                rows.setdefault(name, {}).setdefault(variant, []).append(got)
    load = os.getloadavg()
    print(f"\nbatch {BATCH}, {args.batches} batches x {args.rounds} rounds, medians; load {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}; store {json.loads((args.world / 'bench' / 'loader.json').read_text())['features']}")
    print("| measure | before ex/s | after ex/s | before ex/CPU-s | after ex/CPU-s | ratio (CPU) |")
    print("|---|---|---|---|---|---|")
    for name, variants in rows.items():
        (bw, bc), (aw, ac) = ((statistics.median(w for w, _ in variants[v]),
                               statistics.median(c for _, c in variants[v])) for v in ("before", "after"))
        print(f"| {name} | {bw:,.0f} | {aw:,.0f} | {bc:,.0f} | {ac:,.0f} | {ac / bc:.1f}x |")
    per_batch = time_model_batch(data["after"], min(args.batches, 20))
    print(f"\nmodel_batch (object masks applied, here on the CPU): {per_batch * 1e3:.2f} ms CPU per batch of {BATCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
