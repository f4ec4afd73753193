"""Pretraining speed: the input pipeline against the training step, and the real loop end to end.

Both modes first make, in a temporary folder, a synthetic world and its ground-truth feature
store in the shape the preset is meant for (`base`: 2048-d float16 features and 36 boxes per
image, like the reference's detector; the small presets 64-d and 10+ boxes).

`--mode parts` (the default), in one process, for each preset:
  - data:  `PretrainingData.make_batch` (feature store reads + matching + token and object
           mask drawing + QA sampling + collation into tensors), examples/s;
  - step:  copy to the device + forward with all six losses + backward + optimiser step, on
           batches made beforehand (train mode), examples/s, for each precision asked for.
  Rounds interleave the variants so that load from other processes hits them alike; medians
  are printed. The data pipeline must be at least 10x faster than the `base` training step,
  so that it is never the bottleneck (the run exits 1 otherwise).

`--mode loop`: `pipeline.training.train`, the one training loop, through the stage layer
(config.yaml, DataLoader workers, pinned memory and the device prefetch, validation and a
checkpoint at the end) for `--steps` steps, once per number of loader workers asked for. From
the run's loop.jsonl, leaving out the first logging window (start-up, worker start, kernel
selection, compiling): examples/s and the share of the loop's time spent waiting for the next
batch (`data_wait_share`), and on CUDA the peak memory. The world is sized so that the run
stays within one epoch (a new epoch restarts the loader workers).

    python bench/bench_pretrain.py [--presets small,base] [--batch 32] [--base-batch 4]
        [--rounds 5] [--precisions fp32,bf16] [--threads 2] [--images 300] [--device cpu|cuda]
    python bench/bench_pretrain.py --mode loop --presets base --batch 256 --steps 30
        --precisions bf16 --loader-workers 0,4 --device cuda [--compile] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.features import finalize_store, shard_name, write_shard  # noqa: E402
from pipeline.stages.pretrain import prepare_pretraining  # noqa: E402
from pipeline.synth.generate import generate  # noqa: E402
from pipeline.synth.oracle import oracle_images  # noqa: E402

STORE_SHAPES = {"base": dict(feature_dim=2048, min_boxes=36)}
SMALL_STORE = dict(feature_dim=64, min_boxes=10)
EXAMPLES_PER_IMAGE = 5.5     # pretraining training examples a synthetic image gives (~6, measured)


def write_store(world: Path, out: Path, feature_dim: int, min_boxes: int) -> Path:
    images, meta = oracle_images(world, feature_dim=feature_dim, min_boxes=min_boxes)
    meta.feature_dtype = "float16"   # what extract writes by default
    out.mkdir(parents=True)
    infos = [write_shard(out / shard_name(k // 500), images[k:k + 500], meta) for k in range(0, len(images), 500)]
    finalize_store(out, meta, infos)
    return out


def autocast(precision: str, device: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def make_world(tmp: Path, images: int, workers: int) -> Path:
    summary = generate(tmp / "world", images=images, seed=0, workers=workers)
    (tmp / "world" / "synth_summary.json").write_text(json.dumps(summary))
    return tmp / "world"


# ---- --mode parts ----------------------------------------------------------------------------

def bench_parts(args, tmp: Path) -> list[dict]:
    from pipeline.training.prefetch import to_device

    world = make_world(tmp, args.images, args.world_workers)
    rows = []
    for preset in args.presets:
        shape = STORE_SHAPES.get(preset, SMALL_STORE)
        store = write_store(world, tmp / f"features-{preset}", **shape)
        task, _ = prepare_pretraining(store, world, tmp / f"run-{preset}", preset=preset)
        data = task.train_data()
        batch = args.base_batch if preset == "base" else args.batch
        torch.manual_seed(0)
        model = task.build_model().to(args.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        params = sum(p.numel() for p in model.parameters())
        rng = np.random.default_rng(0)
        data_times, step_times = [], {p: [] for p in args.precisions}
        for r in range(args.rounds + 1):                 # round 0 warms up
            indices = rng.choice(len(data), batch, replace=False)
            t = time.perf_counter()
            b = data.make_batch(indices, np.random.default_rng(r), 0)
            elapsed = time.perf_counter() - t
            if r:
                data_times.append(elapsed)
            for precision in args.precisions:
                synchronize(args.device)
                t = time.perf_counter()
                on_device = to_device(b, torch.device(args.device))
                with autocast(precision, args.device):
                    loss, _ = task.loss(model, on_device, 0)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                synchronize(args.device)
                if r:
                    step_times[precision].append(time.perf_counter() - t)
        data_rate = batch / statistics.median(data_times)
        for precision in args.precisions:
            step_rate = batch / statistics.median(step_times[precision])
            rows.append(dict(preset=preset, params=params, feature_dim=shape["feature_dim"],
                             boxes=shape["min_boxes"], batch=batch, precision=precision, device=args.device,
                             data_examples_per_s=data_rate, step_examples_per_s=step_rate))
    return rows


def print_parts(rows: list[dict], rounds: int) -> bool:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} rounds (medians)")
    print(f"{'preset':7} {'params':>8} {'store':>12} {'batch':>5} {'prec':>5} {'data ex/s':>10} "
          f"{'step ex/s':>10} {'data/step':>9}")
    ok = True
    for row in rows:
        ratio = row["data_examples_per_s"] / row["step_examples_per_s"]
        store = f"{row['feature_dim']}d x{row['boxes']}"
        print(f"{row['preset']:7} {row['params'] / 1e6:7.1f}M {store:>12} {row['batch']:5d} {row['precision']:>5} "
              f"{row['data_examples_per_s']:10.0f} {row['step_examples_per_s']:10.2f} {ratio:8.0f}x")
        if row["preset"] == "base" and ratio < 10:
            ok = False
    if any(row["preset"] == "base" for row in rows):
        print("data pipeline >= 10x the base training step:", "yes" if ok else "NO")
    return ok


# ---- --mode loop -----------------------------------------------------------------------------

def bench_loop(args, tmp: Path) -> list[dict]:
    from pipeline.stages.executor import InProcess
    from pipeline.stages.training import train_run
    from pipeline.training import RunDir, TrainConfig

    batches = max(args.batch if p != "base" else args.base_batch for p in args.presets)
    # one epoch holds every step (+ a spare batch), or a new epoch would restart the loader workers
    images = max(args.images, math.ceil((args.steps + 1) * batches / EXAMPLES_PER_IMAGE))
    world = make_world(tmp, images, args.world_workers)
    rows = []
    for preset in args.presets:
        shape = STORE_SHAPES.get(preset, SMALL_STORE)
        store = write_store(world, tmp / f"features-{preset}", **shape)
        batch = args.base_batch if preset == "base" else args.batch
        for precision in args.precisions:
            for n, workers in enumerate(args.loader_workers):
                out = tmp / f"run-{preset}-{precision}-{n}"
                task, _ = prepare_pretraining(store, world, out, preset=preset)
                if len(task.train_data()) < (args.steps + 1) * batch:
                    print(f"# {preset}: {len(task.train_data())} examples hold fewer than {args.steps} steps of "
                          f"{batch} in one epoch: later epochs restart the loader", file=sys.stderr)
                config = TrainConfig(steps=args.steps, batch_size=batch, precision=precision, device=args.device,
                                     num_workers=workers, log_every=args.log_every, compile=args.compile,
                                     progress=False, seed=0, lr=1e-4)
                start = time.perf_counter()
                train_run(task, config, out, InProcess(), resume=False)
                seconds = time.perf_counter() - start
                rows.append(dict(preset=preset, batch=batch, precision=precision, device=args.device,
                                 loader_workers=workers, compile=args.compile, steps=args.steps,
                                 run_seconds=seconds, **loop_summary(RunDir(out).loop_records())))
    return rows


def loop_summary(records: list[dict]) -> dict:
    """Examples/s, data-wait share and peak memory over the logging windows after the first."""
    timed = records[1:] or records
    seconds = sum(r["seconds"] for r in timed)
    examples = sum(r["examples_per_s"] * r["seconds"] for r in timed)
    summary = {"timed_steps": timed[-1]["step"] - (records[0]["step"] if len(records) > 1 else 0),
               "examples_per_s": examples / seconds, "data_wait_share": sum(r["data_wait_s"] for r in timed) / seconds,
               "first_window_s": records[0]["seconds"]}
    if "max_memory_gib" in records[-1]:
        summary["max_memory_gib"] = records[-1]["max_memory_gib"]
    return summary


def print_loop(rows: list[dict]) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; the first logging window left out")
    print(f"{'preset':7} {'device':>6} {'batch':>5} {'prec':>5} {'loaders':>7} {'steps':>5} {'ex/s':>9} "
          f"{'data wait':>9} {'1st window':>10} {'peak GiB':>8}")
    for row in rows:
        memory = f"{row['max_memory_gib']:8.1f}" if "max_memory_gib" in row else f"{'-':>8}"
        print(f"{row['preset']:7} {row['device']:>6} {row['batch']:5d} {row['precision']:>5} {row['loader_workers']:7d} "
              f"{row['timed_steps']:5d} {row['examples_per_s']:9.1f} {100 * row['data_wait_share']:8.1f}% "
              f"{row['first_window_s']:9.1f}s {memory}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("parts", "loop"), default="parts")
    parser.add_argument("--presets", default="small,base")
    parser.add_argument("--batch", type=int, default=32, help="batch of the small presets")
    parser.add_argument("--base-batch", type=int, default=4, help="batch of the base preset (CPU: ~10 s/example)")
    parser.add_argument("--rounds", type=int, default=5, help="parts: timed rounds")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--images", type=int, default=300, help="synthetic images (loop: at least one epoch's)")
    parser.add_argument("--world-workers", type=int, default=1, help="processes generating the synthetic world")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="loop: optimiser steps")
    parser.add_argument("--log-every", type=int, default=5, help="loop: steps per logging window")
    parser.add_argument("--loader-workers", default="0", help="loop: DataLoader workers, one run each (e.g. 0,4)")
    parser.add_argument("--compile", action="store_true", help="loop: torch.compile the model")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.presets = args.presets.split(",")
    args.precisions = args.precisions.split(",")
    args.loader_workers = [int(n) for n in args.loader_workers.split(",")]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch sees no CUDA device", file=sys.stderr)
        return 2
    import logging
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        rows = (bench_loop if args.mode == "loop" else bench_parts)(args, Path(tmp))
    ok = True
    if args.mode == "loop":
        print_loop(rows)
    else:
        ok = print_parts(rows, args.rounds)
    if args.json:
        device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
        Path(args.json).write_text(json.dumps({"bench": f"pretrain-{args.mode}", "torch": torch.__version__,
                                               "device_name": device, "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
