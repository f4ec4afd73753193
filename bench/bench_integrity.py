"""What each integrity guarantee of a feature-store reader costs, side by side on one store.

    python bench/bench_integrity.py [--images 20000] [--dim 2048] [--boxes 36] [--dir /tmp/bench-integrity]

Builds a store of `--images` images (default 20000 x 36 x 2048 float16: ~2.9 GB) and times,
each cold (the page cache of every shard dropped: fsync + posix_fadvise DONTNEED) and warm:

- open, footer only (`verify="never"`): size, footer, metadata and row counts per shard;
- open, stamp valid (`verify="auto"` on a stamped store): the same plus one stat per shard;
- open, sha256 of every shard (`verify="always"`, and `"auto"` on a store never hashed);
- a CRC32 pass over the same bytes: what a lazy per-row-group check (Parquet page CRCs,
  paid inside the first epoch's reads) would add at least;
- one training epoch's reads: every image's features copied into a float32 array, in store
  order, as a collate does (the cost the checks are compared with).

Each line: seconds, disk/page-cache read MB/s where bytes are read, and the time as a
fraction of the epoch's reads in the same cache state.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import cpu_model, drop_page_cache, load_average  # noqa: E402

from pipeline.features import (FeatureStore, ImageFeatures, StoreMetadata, finalize_store,  # noqa: E402
                               shard_name, write_shard)
from pipeline.features.integrity import RACY_NS, VERIFIED  # noqa: E402

SHARD_ROWS = 1000


def build_store(directory: Path, images: int, dim: int, boxes: int) -> None:
    """Realistic-size rows, cheap to make: one block of post-ReLU-like values, rolled per image."""
    if (directory / "manifest.json").is_file():
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    block = (rng.lognormal(-1.0, 0.7, (boxes * 4, dim)) * (rng.random((boxes * 4, dim)) > 0.33)).astype(np.float16)
    meta = StoreMetadata(detector="bench", detector_config={}, weights_sha256="bench", box_rule={},
                         feature_dim=dim, num_objects=1600, num_attributes=400)
    xy = rng.random((boxes, 2)).astype(np.float32) * 300
    box = np.concatenate([xy, xy + 50], axis=1)
    ids = np.arange(boxes, dtype=np.int32)
    conf = np.linspace(0.1, 0.9, boxes, dtype=np.float32)
    for start in range(0, images, SHARD_ROWS):
        rows = [ImageFeatures(image_id=f"img{i:08d}", width=640, height=480, boxes=box,
                              features=np.roll(block, i % (3 * boxes), axis=0)[:boxes],
                              objects_id=ids, objects_conf=conf, attrs_id=ids, attrs_conf=conf)
                for i in range(start, min(start + SHARD_ROWS, images))]
        write_shard(directory / shard_name(start // SHARD_ROWS), rows, meta)
    finalize_store(directory, meta)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def crc_pass(directory: Path) -> None:
    for f in sorted(directory.glob("shard-*.parquet")):
        crc = 0
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                crc = zlib.crc32(block, crc)


def epoch_reads(directory: Path) -> None:
    store = FeatureStore(directory, verify="never")
    out = np.empty((1, store.metadata.feature_dim), dtype=np.float32)
    for image in store.iter_images():
        n = image.features.shape[0]
        if out.shape[0] < n:
            out = np.empty((n, out.shape[1]), dtype=np.float32)
        out[:n] = image.features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--boxes", type=int, default=36)
    parser.add_argument("--dir", default="/tmp/bench-integrity")
    parser.add_argument("--keep", action="store_true", help="keep the store for the next run")
    args = parser.parse_args()
    directory = Path(args.dir)
    t = timed(lambda: build_store(directory, args.images, args.dim, args.boxes))
    time.sleep(RACY_NS / 1e9)  # shards written within the racy margin are never stamped
    shards = sorted(directory.glob("shard-*.parquet"))
    mb = sum(p.stat().st_size for p in shards) / 1e6
    print(f"# cpu: {cpu_model()}, {os.cpu_count()} logical cpus, load average {load_average()} (1/5/15 min)")
    print(f"# store: {args.images} images x {args.boxes} x {args.dim} float16, {len(shards)} shards, "
          f"{mb:.0f} MB ({t:.0f} s to build)")

    def unstamp():
        (directory / VERIFIED).unlink(missing_ok=True)

    def stamp():
        FeatureStore(directory, verify="always")

    # (name, prepare (untimed), timed work, reads every byte)
    cases = [("open, footer only (verify=never)", unstamp, lambda: FeatureStore(directory, verify="never"), False),
             ("open, stamp valid (verify=auto, stamped)", stamp, lambda: FeatureStore(directory), False),
             ("open, sha256 every shard (verify=always / first auto)", unstamp,
              lambda: FeatureStore(directory, verify="always"), True),
             ("crc32 over every shard (lazy row-group check, at least)", unstamp, lambda: crc_pass(directory), True),
             ("one epoch's reads (features -> float32)", unstamp, lambda: epoch_reads(directory), True)]
    for state in ("cold", "warm"):
        results = {}
        for name, prepare, work, reads in cases:
            prepare()
            if state == "cold":
                drop_page_cache(directory)
            else:
                crc_pass(directory)  # every shard in the page cache
            results[name] = (timed(work), reads)
        epoch = results[cases[-1][0]][0]
        print(f"\n{state} page cache:")
        for name, (seconds, reads) in results.items():
            rate = f"{mb / seconds:8.0f} MB/s" if reads else " " * 13
            print(f"  {name:<58} {seconds:7.2f} s {rate}  {seconds / epoch:6.1%} of an epoch's reads")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
