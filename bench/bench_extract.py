"""Extraction throughput: the fast path beside a plain reference path, in one process.

    python bench/bench_extract.py [--presets vg-r101-c4,tiny] [--images 4] [--batch-sizes 1,2,4]
                                  [--device cpu|cuda] [--autocast bf16] [--threads N]

For each preset (random weights, seeded; vg-r101-c4 at 600 x 1000 input):
- reference: one image at a time, decoded inline (no overlap), fp32, norms not folded
  (detector/ as a plain detectron2-style model);
- fast: `pipeline.extract.extract_images` - decoding threads overlapped with compute, padded
  batches of 1/2/4, norms folded into the convs, optionally bf16/fp16 autocast.
Prints images/s, seconds per image per part (backbone, rpn, roi_pool_res5 = RoIPool + res5 +
mean, predictor_selection = class/box/attribute heads + NMS/selection), the speed-up over the
reference, and how far the fast path's regions are from the reference's (same boxes, max
relative feature difference). On CUDA also peak memory. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.preprocess import pad_batch, prepare_image  # noqa: E402
from detector.rcnn import GeneralizedRCNN  # noqa: E402
from pipeline.extract import Extractor, extract_images, resolve_spec  # noqa: E402
from pipeline.images import decode_image, discover_images  # noqa: E402

PARTS = ("backbone", "rpn", "roi_pool_res5", "predictor_selection")


def write_photos(folder: Path, n: int, height: int, width: int) -> None:
    """Blocky colour images (JPEG) with edges at many scales, so the RPN sees structure."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((height, width, 3), dtype=np.uint8)
        img[:] = rng.integers(0, 255, 3)
        for _ in range(12):
            h, w = rng.integers(20, height // 2), rng.integers(20, width // 2)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            img[y:y + h, x:x + w] = rng.integers(0, 255, 3)
        noise = rng.integers(-20, 20, img.shape)
        Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(folder / f"b{i:03d}.jpg", quality=90)


def run_reference(model: GeneralizedRCNN, entries, device) -> tuple[float, dict, list]:
    timings: dict[str, float] = {}
    outputs = []
    t0 = time.perf_counter()
    for e in entries:
        p = prepare_image(decode_image(e.path), model.cfg.input)
        batch, sizes = pad_batch([p.tensor])
        outputs += model.extract(batch.to(device), sizes, [p.scale], [p.original_size], timings=timings)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, timings, outputs


def run_fast(extractor: Extractor, entries, batch_size: int, threads: int) -> tuple[float, dict, list]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    done, failures = extract_images(entries, _Timed(extractor, timings), batch_size=batch_size,
                                    feature_dtype="float32", decode_threads=threads)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    assert not failures, failures
    return time.perf_counter() - t0, timings, done


class _Timed:
    """An Extractor that records per-part times."""

    def __init__(self, extractor: Extractor, timings: dict):
        self.inner, self.timings, self.cfg, self.spec = extractor, timings, extractor.cfg, extractor.spec

    def __call__(self, prepared):
        return self.inner(prepared, timings=self.timings)


def compare(ref_outputs, fast_images) -> tuple[float, float]:
    """(fraction of images with identical box sets to 0.5 px, max feature diff / feature scale)."""
    same, worst = 0, 0.0
    for r, f in zip(ref_outputs, fast_images):
        rb, fb = r.boxes.cpu().numpy(), f.boxes
        if rb.shape == fb.shape and np.abs(rb - fb).max(initial=0) <= 0.5:
            same += 1
            scale = max(float(np.abs(r.features.cpu().numpy()).max()), 1e-6)
            worst = max(worst, float(np.abs(r.features.cpu().numpy() - f.features).max()) / scale)
    return same / max(len(ref_outputs), 1), worst


def fmt_parts(timings: dict, n: int) -> str:
    return " ".join(f"{timings.get(p, 0.0) / n:7.3f}" for p in PARTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="vg-r101-c4,tiny")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--batch-sizes", default="1,2,4")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--autocast", default="bf16", help="extra fast runs under this autocast ('' for none)")
    ap.add_argument("--threads", type=int, default=2, help="decode threads of the fast path")
    ap.add_argument("--size", default="600x1000", help="raw image HxW (vg-r101-c4 resizes to 600 x 1000)")
    args = ap.parse_args()
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    print(f"# torch {torch.__version__}, device {device}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, images {args.images} of {h}x{w}")
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), args.images, h, w)
        entries = discover_images(tmp)
        for name in args.presets.split(","):
            spec = resolve_spec(name, "random", device=args.device)
            plain = Extractor(spec, fold_norms=False).model
            print(f"\n## {name}: feature dim {plain.cfg.feature_dim}, {plain.cfg.rpn.post_nms_topk_test} proposals, "
                  f"input {plain.cfg.input.min_size}/{plain.cfg.input.max_size}")
            print(f"{'path':<32} {'img/s':>7} {'x ref':>6}   s/img: {'backbone':>8} {'rpn':>7} "
                  f"{'roi+res5':>8} {'pred+sel':>8}   same-boxes  feat-diff  {'peak MiB' if device.type == 'cuda' else ''}")
            run_reference(plain, entries[:1], device)                      # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            secs, timings, ref_out = run_reference(plain, entries, device)
            ref_rate = len(entries) / secs
            mem = f"{torch.cuda.max_memory_allocated() / 2**20:8.0f}" if device.type == "cuda" else ""
            print(f"{'reference (b1, fp32, inline)':<32} {ref_rate:7.3f} {1.0:6.2f}   {'':6} {fmt_parts(timings, len(entries))}"
                  f"   {'-':>10}  {'-':>9}  {mem}")
            del plain
            precisions = [None] + ([args.autocast] if args.autocast else [])
            for amp in precisions:
                fast = Extractor(resolve_spec(name, "random", device=args.device, autocast=amp))
                for bs in (int(b) for b in args.batch_sizes.split(",")):
                    if bs > len(entries):
                        continue
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    secs, timings, done = run_fast(fast, entries, bs, args.threads)
                    rate = len(entries) / secs
                    same, diff = compare(ref_out, done)
                    mem = f"{torch.cuda.max_memory_allocated() / 2**20:8.0f}" if device.type == "cuda" else ""
                    label = f"fast b{bs} {amp or 'fp32'} threads={args.threads}"
                    print(f"{label:<32} {rate:7.3f} {rate / ref_rate:6.2f}   {'':6} {fmt_parts(timings, len(entries))}"
                          f"   {same:10.2f}  {diff:9.2e}  {mem}", flush=True)
                del fast


if __name__ == "__main__":
    main()
