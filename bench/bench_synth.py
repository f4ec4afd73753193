"""How fast `synth` writes a world: one rendering process vs a pool, in one run.

    python bench/bench_synth.py [--images 2000] [--workers 2]

Prints seconds per stage and images per second for each, and the pool's speed-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from pipeline.synth.generate import generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    results = {}
    for workers in (1, args.workers):
        out = tempfile.mkdtemp(prefix="bench-synth-")
        try:
            start = time.perf_counter()
            summary = generate(out, images=args.images, seed=0, workers=workers)
            total = time.perf_counter() - start
        finally:
            shutil.rmtree(out, ignore_errors=True)
        results[workers] = total
        s = summary["seconds"]
        print(f"workers={workers}: {total:.1f} s total ({args.images / total:.0f} images/s); "
              f"plan {s['plan']:.1f} s, render {s['render']:.1f} s, annotations {s['annotations']:.1f} s")
    print(f"pool speed-up: {results[1] / results[args.workers]:.2f}x with {args.workers} workers; "
          f"10,000 images would take about {10_000 / args.images * results[args.workers]:.0f} s")


if __name__ == "__main__":
    main()
