"""Extraction throughput: the fast path beside a plain reference path, in one process.

    python bench/bench_extract.py [--presets vg-r101-c4,tiny] [--images 2] [--batch-sizes 1,2]
                                  [--device cpu|cuda] [--autocast bf16] [--threads N]
                                  [--given-box-images 1]

For each preset (random weights, seeded; vg-r101-c4 at 600 x 1000 input):
- reference: one image at a time, decoded inline (no overlap), fp32, norms not folded
  (detector/ as a plain detectron2-style model);
- fast: `pipeline.extract.extract_images` - decoding threads overlapped with compute, padded
  batches, norms folded into the convs, optionally bf16/fp16 autocast.

The RPN head gets the reference's initialisation (normal std 0.01, bias 0, as detectron2's
StandardRPNHead): with the MSRA fill of `--weights random` its objectness logits reach
hundreds, the decoded boxes clip to the whole image and NMS leaves a dozen proposals, so the
RoI head (res5 over every proposal, most of the real cost) would hardly run. Every image must
reach the preset's post-NMS proposal count on every path, or no table is printed.

Prints, per path: images/s, seconds per image per part (backbone, rpn, roi_pool_res5 = RoIPool
+ res5 + mean, predictor_selection = class/box/attribute heads + NMS/selection), the speed-up
over the reference, proposals per image, achieved GFLOP/s and its fraction of the same run's
GEMM peak (the best of its measurements at the start and before each table; FLOPs counted
with FlopCounterMode on the reference's first image), and box agreement with the reference
(share of the reference's saved boxes the path also saves, to 0.5 px). Then the feature
difference of each fast precision against fp32 on the *same* proposals (given-box mode: the
reference's fp32 proposals of the first `--given-box-images` images fed to every path), so a
precision that changes which boxes are chosen still has its features compared. On CUDA also
peak memory.
Not a test: nothing is asserted, but a run that measured less than it claims refuses to print.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import MatmulPeak, load_average, machine_line  # noqa: E402

from detector.preprocess import pad_batch, prepare_image  # noqa: E402
from detector.rcnn import GeneralizedRCNN  # noqa: E402
from pipeline.extract import AUTOCAST, Extractor, extract_images, resolve_spec  # noqa: E402
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


def init_rpn_head_as_reference_(model: GeneralizedRCNN, seed: int = 0) -> None:
    """detectron2's StandardRPNHead init (normal std 0.01, bias 0) for the head's three convs,
    from a seeded generator so the reference and every fast model get the same weights."""
    gen = torch.Generator().manual_seed(seed)
    head = model.proposal_generator.rpn_head
    with torch.no_grad():
        for layer in (head.conv, head.objectness_logits, head.anchor_deltas):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.01)
            layer.bias.zero_()


def prepared(entry, cfg):
    p = prepare_image(decode_image(entry.path), cfg.input)
    batch, sizes = pad_batch([p.tensor])
    return p, batch, sizes


def run_reference(model: GeneralizedRCNN, entries, device) -> tuple[float, dict, list]:
    timings: dict[str, float] = {}
    outputs = []
    t0 = time.perf_counter()
    for e in entries:
        p, batch, sizes = prepared(e, model.cfg)
        outputs += model.extract(batch.to(device), sizes, [p.scale], [p.original_size], timings=timings)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, timings, outputs


class _Timed:
    """An Extractor that records per-part times and each image's proposal count."""

    def __init__(self, extractor: Extractor, timings: dict):
        self.inner, self.timings, self.cfg, self.spec = extractor, timings, extractor.cfg, extractor.spec
        self.proposals: list[int] = []

    def __call__(self, prepared_images, timings: dict | None = None):
        # extract_images may pass its own `timings` (None here): this wrapper keeps its own dict
        regions = self.inner(prepared_images, timings=self.timings)
        self.proposals += [r.num_proposals for r in regions]
        return regions


def run_fast(extractor: Extractor, entries, batch_size: int, threads: int) -> tuple[float, dict, list, list]:
    timings: dict[str, float] = {}
    timed = _Timed(extractor, timings)
    t0 = time.perf_counter()
    done, failures = extract_images(entries, timed, batch_size=batch_size, feature_dtype="float32",
                                    decode_threads=threads)
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"bench_extract: {failures[0]['image']}: {failures[0]['reason']}")
    return seconds, timings, done, timed.proposals


def box_agreement(ref_outputs, path_boxes: list[np.ndarray]) -> str:
    """Share of the reference's saved boxes that the path also saves (every coordinate within
    0.5 px), and how many images have identical box sets; 'n/a' when the reference saved none."""
    matched = total = identical = 0
    for r, boxes in zip(ref_outputs, path_boxes):
        rb = r.boxes.cpu().numpy()
        total += len(rb)
        if len(rb) and len(boxes):
            close = (np.abs(rb[:, None, :] - boxes[None, :, :]) <= 0.5).all(axis=2)
            matched += int(close.any(axis=1).sum())
        identical += int(rb.shape == boxes.shape and np.abs(rb - boxes).max(initial=0) <= 0.5)
    if total == 0:
        return "n/a"
    return f"{matched / total:.2f} ({identical}/{len(ref_outputs)} img same)"


def features_on_boxes(model: GeneralizedRCNN, batch: torch.Tensor, sizes, boxes: list[torch.Tensor],
                      autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """(R, D) saved features of given boxes (input pixels), computed as `extract` computes them:
    backbone and res5 under the autocast, RoIPool and the mean in float32."""
    amp = (torch.autocast(batch.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with torch.inference_mode():
        with amp:
            res4 = model.backbone(batch, sizes)["res4"]
        pooled = model.roi_heads.pool(res4, boxes)
        with amp:
            x = model.roi_heads.res5(pooled)
        return x.float().mean(dim=(2, 3))


def fp32_proposals(model: GeneralizedRCNN, batch: torch.Tensor, sizes) -> list[torch.Tensor]:
    with torch.inference_mode():
        res4 = model.backbone(batch, sizes)["res4"]
        rpn_out = model.proposal_generator.predict(res4, model.backbone.feature_sizes(sizes))
        proposals, _ = model.proposal_generator.find_top_proposals(rpn_out, sizes)
    return proposals


def feature_difference(ref: torch.Tensor, other: torch.Tensor) -> str:
    """max |diff| / max |ref| and the mean cosine similarity per region; 'n/a' on no regions."""
    if ref.numel() == 0:
        return f"{'n/a':>12} {'n/a':>10}"
    scale = max(float(ref.abs().max()), 1e-12)
    worst = float((other - ref).abs().max()) / scale
    cosine = float(torch.nn.functional.cosine_similarity(other, ref, dim=1).mean())
    return f"{worst:12.2e} {cosine:10.6f}"


def count_flops(model: GeneralizedRCNN, entry, device) -> int:
    p, batch, sizes = prepared(entry, model.cfg)
    counter = FlopCounterMode(display=False)
    with counter:
        model.extract(batch.to(device), sizes, [p.scale], [p.original_size])
    return counter.get_total_flops()


def proposals_column(counts: list[int]) -> str:
    return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="vg-r101-c4,tiny")
    ap.add_argument("--images", type=int, default=2, help="vg-r101-c4 takes ~5-15 s per image per path on 2 cores")
    ap.add_argument("--batch-sizes", default="1,2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--autocast", default="bf16", help="extra fast runs under this autocast ('' for none)")
    ap.add_argument("--threads", type=int, default=2, help="decode threads of the fast path")
    ap.add_argument("--given-box-images", type=int, default=1,
                    help="images whose fp32 proposals every precision's features are compared on")
    ap.add_argument("--size", default="600x1000", help="raw image HxW (vg-r101-c4 resizes to 600 x 1000)")
    args = ap.parse_args()
    device = torch.device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    print(machine_line())
    dtypes = {"fp32": torch.float32}
    if args.autocast:
        dtypes[args.autocast] = getattr(torch, AUTOCAST[args.autocast])
    peaks = MatmulPeak(dtypes, args.device)
    print(f"# matmul peak at the start (2048^3 GEMM, torch threads as above): {peaks.describe()}")
    print(f"# device {device}, {args.images} images of {h}x{w}, decode threads {args.threads}; "
          f"each path warmed up on one image first (untimed)")
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), args.images, h, w)
        entries = discover_images(tmp)
        for name in args.presets.split(","):
            spec = resolve_spec(name, "random", device=args.device)
            plain = Extractor(spec, fold_norms=False).model
            init_rpn_head_as_reference_(plain)
            wanted = plain.cfg.rpn.post_nms_topk_test
            flops = count_flops(plain, entries[0], device)                  # also the reference's warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            secs, timings, ref_out = run_reference(plain, entries, device)
            ref_rate = len(entries) / secs
            n = len(entries)
            rows = []
            short = {}

            def row(label, rate, timings, counts, precision, agreement, mem):
                if min(counts) < wanted:
                    short[label] = counts
                gflops = flops * rate / 1e9
                rows.append(lambda: (f"{label:<30} {rate:7.3f} {1 / rate:7.2f} {rate / ref_rate:6.2f}  "
                                     f"{' '.join(f'{timings.get(p, 0.0) / n:8.3f}' for p in PARTS)}  "
                                     f"{proposals_column(counts):>6} {gflops:8.1f} {gflops / peaks[precision]:7.1%}  "
                                     f"{agreement:<20} {mem}"))

            mem = f"{torch.cuda.max_memory_allocated() / 2**20:8.0f}" if device.type == "cuda" else ""
            row("reference (b1, fp32, inline)", ref_rate, timings, [r.num_proposals for r in ref_out], "fp32",
                "-", mem)
            fast_models = {}
            for amp in [None] + ([args.autocast] if args.autocast else []):
                fast = Extractor(resolve_spec(name, "random", device=args.device, autocast=amp))
                init_rpn_head_as_reference_(fast.model)
                run_fast(fast, entries[:1], 1, args.threads)                  # warm-up
                for bs in (int(b) for b in args.batch_sizes.split(",")):
                    if bs > len(entries):
                        continue
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    secs, timings, done, counts = run_fast(fast, entries, bs, args.threads)
                    mem = f"{torch.cuda.max_memory_allocated() / 2**20:8.0f}" if device.type == "cuda" else ""
                    row(f"fast b{bs} {amp or 'fp32'}", len(entries) / secs, timings, counts, amp or "fp32",
                        box_agreement(ref_out, [d.boxes for d in done]), mem)
                fast_models[amp or "fp32"] = fast

            if short:
                detail = "; ".join(f"{label}: {counts}" for label, counts in short.items())
                raise SystemExit(f"bench_extract: preset {name}: fewer than the configured {wanted} post-NMS "
                                 f"proposals per image reached the RoI head ({detail}); the times would not "
                                 f"measure the real work, so no table is printed")
            peaks.measure()
            print(f"\n## {name}: feature dim {plain.cfg.feature_dim}, {wanted} post-NMS proposals per image "
                  f"(every path, every image), input {plain.cfg.input.min_size}/{plain.cfg.input.max_size}, "
                  f"{flops / 1e9:.1f} GFLOP per image (counted, reference path, image 0); "
                  f"load average {load_average()}")
            print(f"matmul peak, best of this run's measurements (start, before each table): {peaks.describe()}")
            print(f"{'path':<30} {'img/s':>7} {'s/img':>7} {'x ref':>6}  {'backbone':>8} {'rpn':>8} "
                  f"{'roi+res5':>8} {'pred+sel':>8}  {'props':>6} {'GFLOP/s':>8} {'of peak':>7}  "
                  f"{'boxes as ref':<20} {'peak MiB' if device.type == 'cuda' else ''}")
            for line in rows:
                print(line())

            # the same proposals for every precision: the feature difference is then always measured
            given = entries[:args.given_box_images]
            print(f"\nfeatures on the reference's fp32 proposals (given-box mode, {len(given)} images x {wanted} "
                  f"proposals) vs the reference path:")
            print(f"{'path':<30} {'max rel diff':>12} {'mean cos':>10}")
            ref_feats, others = [], {k: [] for k in fast_models}
            for e in given:
                _, batch, sizes = prepared(e, plain.cfg)
                batch = batch.to(device)
                proposals = fp32_proposals(plain, batch, sizes)
                ref_feats.append(features_on_boxes(plain, batch, sizes, proposals, None))
                for key, fast in fast_models.items():
                    others[key].append(features_on_boxes(fast.model, batch, sizes, proposals, fast.autocast_dtype))
            for key, feats in others.items():
                difference = feature_difference(torch.cat(ref_feats), torch.cat(feats))
                print(f"{'fast ' + key + ' (norms folded)':<30} {difference}")
            del plain, fast_models
    print(f"\n# load average at the end {load_average()}")


if __name__ == "__main__":
    main()
