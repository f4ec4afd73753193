"""Pretraining speed: the data pipeline alone against full training steps, per model preset.

For each preset, on a synthetic world and its ground-truth feature store (made here, in a
temporary folder, with the store shape the preset is meant for: `base` gets 2048-d features
and 36 boxes per image, like the reference's detector; the small presets 64-d features and
10+ boxes), in one process:

  - data:  `PretrainingData.make_batch` (feature store reads + matching + token and object
           masking + QA sampling + collation into tensors), examples/s;
  - step:  forward with all six losses + backward + optimiser step, on batches made
           beforehand (train mode), examples/s, for each precision asked for.

Rounds interleave the variants so that load from other processes hits them alike; medians are
printed. The data pipeline must be at least 10x faster than the `base` training step, so that
it is never the bottleneck (the run exits 1 otherwise).

    python bench/bench_pretrain.py [--presets small,base] [--batch 32] [--base-batch 4]
        [--rounds 5] [--precisions fp32,bf16] [--threads 2] [--images 300]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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


def write_store(world: Path, out: Path, feature_dim: int, min_boxes: int) -> Path:
    images, meta = oracle_images(world, feature_dim=feature_dim, min_boxes=min_boxes)
    meta.feature_dtype = "float16"   # what extract writes by default
    out.mkdir(parents=True)
    infos = [write_shard(out / shard_name(k // 500), images[k:k + 500], meta) for k in range(0, len(images), 500)]
    finalize_store(out, meta, infos)
    return out


def autocast(precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,base")
    parser.add_argument("--batch", type=int, default=32, help="batch of the small presets")
    parser.add_argument("--base-batch", type=int, default=4, help="batch of the base preset (CPU: ~10 s/example)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.presets.split(",")
    precisions = args.precisions.split(",")
    import logging
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        summary = generate(tmp / "world", images=args.images, seed=0, workers=1)
        (tmp / "world" / "synth_summary.json").write_text(json.dumps(summary))
        rows = []
        for preset in presets:
            shape = STORE_SHAPES.get(preset, SMALL_STORE)
            store = write_store(tmp / "world", tmp / f"features-{preset}", **shape)
            task, _ = prepare_pretraining(store, tmp / "world", tmp / f"run-{preset}", preset=preset)
            data = task.train_data()
            batch = args.base_batch if preset == "base" else args.batch
            torch.manual_seed(0)
            model = task.build_model().train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            params = sum(p.numel() for p in model.parameters())
            rng = np.random.default_rng(0)
            data_times, step_times = [], {p: [] for p in precisions}
            for r in range(args.rounds + 1):                 # round 0 warms up
                indices = rng.choice(len(data), batch, replace=False)
                t = time.perf_counter()
                b = data.make_batch(indices, np.random.default_rng(r), 0)
                elapsed = time.perf_counter() - t
                if r:
                    data_times.append(elapsed)
                for precision in precisions:
                    t = time.perf_counter()
                    with autocast(precision):
                        loss, _ = task.loss(model, b, 0)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if r:
                        step_times[precision].append(time.perf_counter() - t)
            data_rate = batch / statistics.median(data_times)
            for precision in precisions:
                step_rate = batch / statistics.median(step_times[precision])
                rows.append((preset, params, shape, batch, precision, data_rate, step_rate))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds (medians)")
    print(f"{'preset':7} {'params':>8} {'store':>12} {'batch':>5} {'prec':>5} {'data ex/s':>10} "
          f"{'step ex/s':>10} {'data/step':>9}")
    ok = True
    for preset, params, shape, batch, precision, data_rate, step_rate in rows:
        ratio = data_rate / step_rate
        store = f"{shape['feature_dim']}d x{shape['min_boxes']}"
        print(f"{preset:7} {params / 1e6:7.1f}M {store:>12} {batch:5d} {precision:>5} {data_rate:10.0f} "
              f"{step_rate:10.2f} {ratio:8.0f}x")
        if preset == "base" and ratio < 10:
            ok = False
    if "base" in presets:
        print("data pipeline >= 10x the base training step:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
