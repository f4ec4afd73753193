"""Feature store vs the reference bottom-up-attention TSV, side by side in one run.

    python bench/bench_features.py [--images 3000] [--dim 2048] [--boxes 36] [--dir /tmp/bench-features]

(a) reference: LXMERT's `load_obj_tsv` approach — csv.DictReader + base64 + np.frombuffer of
    the whole file into a dict in RAM, then lookups;
(b) this store: TSV import speed, sequential and random `get` throughput, size on disk;
each measured in a fresh process so its peak RSS is its own. Also random `get` latency
for several row-group sizes and zstd, which is how the layout defaults were chosen.
"""

from __future__ import annotations

import argparse
import base64
import csv
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import warnings

warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FIELDNAMES = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_tsv(path: Path, n: int, dim: int, boxes: int) -> None:
    from feature_data import make_image
    from pipeline.features.tsv import format_line

    with open(path, "w") as fh:
        for i in range(n):
            fh.write(format_line(make_image(i, num_boxes=boxes, dim=dim, num_objects=1600, num_attributes=400)))


# --- measurements, each run in its own process -------------------------------------------
def reference_load(tsv: str) -> dict:
    """The LXMERT reference: decode the whole TSV into memory (src/utils.py load_obj_tsv)."""
    t0 = time.perf_counter()
    data = []
    csv.field_size_limit(sys.maxsize)
    with open(tsv) as f:
        reader = csv.DictReader(f, FIELDNAMES, delimiter="\t")
        for item in reader:
            for key in ["img_h", "img_w", "num_boxes"]:
                item[key] = int(item[key])
            boxes = item["num_boxes"]
            decode = [("objects_id", (boxes,), np.int64), ("objects_conf", (boxes,), np.float32),
                      ("attrs_id", (boxes,), np.int64), ("attrs_conf", (boxes,), np.float32),
                      ("boxes", (boxes, 4), np.float32), ("features", (boxes, -1), np.float32)]
            for key, shape, dtype in decode:
                item[key] = np.frombuffer(base64.b64decode(item[key]), dtype=dtype).reshape(shape)
            data.append(item)
    by_id = {d["img_id"]: d for d in data}
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = list(by_id)
    order = rng.permutation(len(ids))
    import torch

    batch = torch.empty((100, by_id[ids[0]]["features"].shape[1]))
    batch[:1].copy_(torch.from_numpy(by_id[ids[0]]["features"][:1]))  # warm up torch
    lookup_s = float("inf")
    for _ in range(3):  # best of 3 passes: the machine is shared
        t0 = time.perf_counter()
        for k in order:
            f = by_id[ids[k]]["features"]
            batch[:len(f)].copy_(torch.from_numpy(f))  # what a collate does: copy into the float32 batch
        lookup_s = min(lookup_s, time.perf_counter() - t0)
    return {"load_s": load_s, "n": len(ids), "lookup_s": lookup_s, "peak_rss_mb": peak_rss_mb(), "anon_mb": anon_mb()}


def store_import(tsv: str, out: str, compression: str | None) -> dict:
    from pipeline.features.tsv import import_tsv

    t0 = time.perf_counter()
    report = import_tsv([tsv], out, dtype="float16", shard_size=1000)
    return {"import_s": time.perf_counter() - t0, "n": report.images, "peak_rss_mb": peak_rss_mb()}


def store_reads(store_dir: str, random_order: bool, limit: int | None) -> dict:
    from pipeline.features import FeatureStore

    t0 = time.perf_counter()
    store = FeatureStore(store_dir)
    open_s = time.perf_counter() - t0
    ids = store.image_ids
    if random_order:
        ids = [ids[k] for k in np.random.default_rng(0).permutation(len(ids))]
    if limit:
        ids = ids[:limit]
    import torch

    batch = torch.empty((100, store.metadata.feature_dim))
    batch[:1].copy_(torch.from_numpy(store.get(ids[0]).features[:1]))  # warm up torch before measuring
    base = anon_mb()
    read_s = float("inf")
    for _ in range(3):  # best of 3 passes: the machine is shared
        nbytes = 0
        t0 = time.perf_counter()
        for image_id in ids:
            img = store.get(image_id)
            batch[:img.num_boxes].copy_(torch.from_numpy(img.features))  # as a collate does: into a float32 batch
            nbytes += img.features.nbytes
        read_s = min(read_s, time.perf_counter() - t0)
    return {"open_s": open_s, "read_s": read_s, "n": len(ids), "bytes": nbytes, "peak_rss_mb": peak_rss_mb(),
            "anon_mb": anon_mb(), "anon_growth_mb": anon_mb() - base}


def in_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def rewrite(src: str, dst: str, row_group_size: int, compression: str | None) -> None:
    from pipeline.features import FeatureStore, finalize_store, shard_name, write_shard

    store = FeatureStore(src)
    images = list(store.iter_images())
    Path(dst).mkdir(parents=True, exist_ok=True)
    for k in range(0, len(images), 1000):
        write_shard(Path(dst) / shard_name(k // 1000), images[k:k + 1000], store.metadata,
                    compression=compression, row_group_size=row_group_size)
    finalize_store(dst, store.metadata)


def dir_mb(path: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(path).glob("*")) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--boxes", type=int, default=36)
    ap.add_argument("--dir", default="/tmp/bench-features")
    args = ap.parse_args()
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tsv = root / "features.tsv"
    print(f"generating {args.images} images x {args.boxes} x {args.dim} (non-negative, ~1/3 zeros, max ~35) ...",
          flush=True)
    make_tsv(tsv, args.images, args.dim, args.boxes)
    n = args.images

    ref = in_process(reference_load, str(tsv))
    imp = in_process(store_import, str(tsv), str(root / "store"), None)
    seq = in_process(store_reads, str(root / "store"), False, None)
    rnd = in_process(store_reads, str(root / "store"), True, None)

    ref_per_img_ms = ref["load_s"] / n * 1e3
    rnd_per_img_ms = rnd["read_s"] / n * 1e3
    gb = lambda r: r["bytes"] / r["read_s"] / 1e9  # noqa: E731
    print()
    print("(peak RSS counts mapped file pages, which live in the shared page cache; 'private' is RssAnon)")
    print(f"{'approach':<44} {'images/s':>10} {'ms/image':>9} {'GB/s':>6} {'peak RSS MB':>12} {'private MB':>11}")
    print(f"{'reference: TSV decode into RAM (load_obj_tsv)':<44} {n / ref['load_s']:>10.0f} {ref_per_img_ms:>9.3f} "
          f"{'':>6} {ref['peak_rss_mb']:>12.0f} {ref['anon_mb']:>11.0f}")
    print(f"{'reference: lookup after the load':<44} {n / ref['lookup_s']:>10.0f} {ref['lookup_s'] / n * 1e3:>9.3f} "
          f"{'':>6} {'':>12} {'':>11}")
    print(f"{'store: import-tsv (float16 shards)':<44} {n / imp['import_s']:>10.0f} {imp['import_s'] / n * 1e3:>9.3f} "
          f"{'':>6} {imp['peak_rss_mb']:>12.0f}")
    print(f"{'store: sequential get':<44} {n / seq['read_s']:>10.0f} {seq['read_s'] / n * 1e3:>9.3f} "
          f"{gb(seq):>6.2f} {seq['peak_rss_mb']:>12.0f} {seq['anon_mb']:>11.0f}")
    print(f"{'store: random get':<44} {n / rnd['read_s']:>10.0f} {rnd_per_img_ms:>9.3f} {gb(rnd):>6.2f} "
          f"{rnd['peak_rss_mb']:>12.0f} {rnd['anon_mb']:>11.0f}")
    print()
    print(f"size on disk: TSV {tsv.stat().st_size / 2**20:.0f} MB, store {dir_mb(root / 'store'):.0f} MB "
          f"(ratio {dir_mb(root / 'store') / (tsv.stat().st_size / 2**20):.2f})")
    print(f"store open (index over all shards): {seq['open_s'] * 1e3:.1f} ms")
    print(f"ratio random get vs TSV decode, per image: {ref_per_img_ms / rnd_per_img_ms:.1f}x faster")
    print(f"ratio private memory reference / random-get reader: {ref['anon_mb'] / rnd['anon_mb']:.1f}x")
    print(f"private memory growth of the reader over the whole store: {rnd['anon_growth_mb']:.1f} MB "
          f"(reference holds {ref['anon_mb']:.0f} MB anonymous)")

    print("\nlayout choice: random get by row-group size and codec (same data)")
    print(f"{'row group':>9} {'codec':>6} {'MB':>7} {'random img/s':>13} {'ms/image':>9} {'sequential img/s':>17}")
    for rg in (16, 32, 64, 256):
        for codec in (None, "zstd"):
            d = root / f"rg{rg}-{codec}"
            in_process(rewrite, str(root / "store"), str(d), rg, codec)
            r = in_process(store_reads, str(d), True, min(n, 1500))
            s = in_process(store_reads, str(d), False, None)
            print(f"{rg:>9} {codec or 'none':>6} {dir_mb(d):>7.0f} {r['n'] / r['read_s']:>13.0f} "
                  f"{r['read_s'] / r['n'] * 1e3:>9.3f} {s['n'] / s['read_s']:>17.0f}")
            shutil.rmtree(d)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
