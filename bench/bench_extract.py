"""Extraction throughput: the fast path beside a plain reference path, in one process, on a CPU
or a CUDA GPU.

    python bench/bench_extract.py [--presets vg-r101-c4,tiny] [--images 2] [--batch-sizes 1,2]
                                  [--device cpu|cuda] [--precisions fp32,bf16] [--threads N]
                                  [--sizes 480x640,600x800,...] [--given-box-images 1] [--json PATH]

For each preset (random weights, seeded), on JPEGs of realistic sizes (480x640 .. 600x1000,
some portrait; vg-r101-c4 resizes them to 600 short / 1000 long sides):
- reference: one image at a time, decoded inline with PIL, fp32, norms not folded, NCHW
  (detector/ as a plain detectron2-style model);
- fast: `pipeline.extract.extract_images` as `extract` runs it - decode threads, padded
  batches, norms folded, per precision (fp32 = IEEE fp32 on CUDA; bf16/fp16 autocast for the
  convolutions), per batch size; on CUDA also channels_last, cuDNN autotuning, nvJPEG
  decoding, the fixed-shape box selection and one device-to-host copy per batch.

The RPN head gets the reference's initialisation (normal std 0.01, bias 0, as detectron2's
StandardRPNHead): with the MSRA fill of `--weights random` its objectness logits reach
hundreds, the decoded boxes clip to the whole image and NMS leaves a dozen proposals, so the
RoI head (res5 over every proposal, most of the real cost) would hardly run. Every image must
reach the preset's post-NMS proposal count on every path, or no table is printed (the JSON
then says why).

Per path: images/s, seconds per image per part (backbone, rpn, roi_pool, res5 = res5 + mean
over the RoIs, pred+sel = class/box/attribute heads + selection), the speed-up over the
reference, proposals per image, achieved GFLOP/s of the whole detector and of the res5 stage
alone, each as a fraction of the same run's GEMM peak in the path's precision (best of its
measurements at the start and before each table; an 8192^3 GEMM on CUDA, 2048^3 on a CPU) and
on CUDA of the data-sheet peak; box agreement with the reference and, for a low precision,
with the fp32 fast path at the same batch size (share of the other's saved boxes also saved,
to 0.5 px, and share with a box at IoU >= 0.7); on CUDA the peak memory. FLOPs are counted
with FlopCounterMode: the whole detector on every image's reference pass (which is also the
reference's warm-up), res5 per RoI times the RoIs each path ran.
Then the feature difference of each fast precision against the reference on the *same*
proposals (given-box mode: the reference's fp32 proposals of the first `--given-box-images`
images), so a precision that changes which boxes are chosen still has its features compared.

Timing: on CUDA each configuration runs once untimed (cuDNN autotuning of its shapes, the
allocator), once timed without part timers (images/s, peak memory) and once with the part
timers (which synchronise the device around every part). On a CPU one warm-up image, then
one timed pass that also gives the parts.
`--json PATH` writes {"machine", "peaks", "rows", "complete", "problem"} for a device-check
script; each row has the same keys.
Not a test: nothing is asserted, but a run that measured less than it claims refuses to print.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import MatmulPeak, device_line, load_average, machine_line, nominal_peak_tflops  # noqa: E402

from detector.preprocess import pad_batch, prepare_image  # noqa: E402
from detector.rcnn import GeneralizedRCNN  # noqa: E402
from pipeline.extract import AUTOCAST, Extractor, extract_images, resolve_spec  # noqa: E402
from pipeline.images import decode_image, discover_images  # noqa: E402

PARTS = ("backbone", "rpn", "roi_pool", "res5", "predictor_selection")
PRECISIONS = {"fp32": None, "bf16": "bf16", "fp16": "fp16"}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    try:
        sizes = [tuple(int(v) for v in s.split("x")) for s in text.split(",")]
    except ValueError:
        raise SystemExit(f"bench_extract: --sizes wants HxW[,HxW...], not {text!r}") from None
    if not sizes or any(len(s) != 2 or min(s) < 32 for s in sizes):
        raise SystemExit(f"bench_extract: --sizes wants HxW[,HxW...] with sides >= 32, not {text!r}")
    return sizes


def blocky_photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Blocks of colour with noise (HxWx3 uint8): edges at many scales for the RPN."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 255, 3)
    for _ in range(12):
        h, w = rng.integers(20, height // 2), rng.integers(20, width // 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        img[y:y + h, x:x + w] = rng.integers(0, 255, 3)
    return np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def write_photos(folder: Path, n: int, sizes: list[tuple[int, int]]) -> None:
    """`blocky_photo` JPEGs (quality 90); image i is sizes[i % len(sizes)] (height x width)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        height, width = sizes[i % len(sizes)]
        Image.fromarray(blocky_photo(height, width, rng)).save(folder / f"b{i:03d}.jpg", quality=90)


def init_rpn_head_as_reference_(model: GeneralizedRCNN, seed: int = 0) -> None:
    """detectron2's StandardRPNHead init (normal std 0.01, bias 0) for the head's three convs,
    from a seeded generator so the reference and every fast model get the same weights."""
    gen = torch.Generator().manual_seed(seed)
    head = model.proposal_generator.rpn_head
    with torch.no_grad():
        for layer in (head.conv, head.objectness_logits, head.anchor_deltas):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.01)
            layer.bias.zero_()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepared(entry, cfg):
    p = prepare_image(decode_image(entry.path), cfg.input)
    batch, sizes = pad_batch([p.tensor])
    return p, batch, sizes


def run_reference(model: GeneralizedRCNN, entries, device, count: bool = False) -> tuple[float, dict, list, list]:
    """-> (seconds, part times, regions per image, FLOPs per image when `count`)."""
    timings: dict[str, float] = {}
    outputs, flops = [], []
    synchronize(device)
    t0 = time.perf_counter()
    for e in entries:
        p, batch, sizes = prepared(e, model.cfg)
        counter = FlopCounterMode(display=False) if count else contextlib.nullcontext()
        with counter:
            outputs += model.extract(batch.to(device), sizes, [p.scale], [p.original_size],
                                     timings=None if count else timings)
        if count:
            flops.append(counter.get_total_flops())
    synchronize(device)
    return time.perf_counter() - t0, timings, outputs, flops


class _Counted:
    """An Extractor that records each image's proposal count (and part times when given)."""

    def __init__(self, extractor: Extractor, timings: dict | None):
        self.inner, self.timings = extractor, timings
        for name in ("cfg", "spec", "device", "prepare_on_device", "jpeg_on_device"):
            setattr(self, name, getattr(extractor, name))
        self.proposals: list[int] = []

    def extract_batch(self, prepared_images, timings: dict | None = None):
        regions = self.inner.extract_batch(prepared_images, timings=self.timings)
        self.proposals += regions.num_proposals
        return regions


def run_fast(extractor: Extractor, entries, batch_size: int, threads: int, timings: dict | None = None
             ) -> tuple[float, list, list]:
    """-> (seconds, rows, proposals per image) of one `extract_images` pass."""
    counted = _Counted(extractor, timings)
    synchronize(extractor.device)
    t0 = time.perf_counter()
    done, failures = extract_images(entries, counted, batch_size=batch_size, feature_dtype="float16",
                                    decode_threads=threads)
    synchronize(extractor.device)
    seconds = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"bench_extract: {failures[0]['image']}: {failures[0]['reason']}")
    return seconds, done, counted.proposals


def box_agreement(ref_boxes: list[np.ndarray], path_boxes: list[np.ndarray]) -> tuple[float | None, int, float | None]:
    """(share of the first's saved boxes that the second also saves, every coordinate within
    0.5 px; how many images have identical box sets; share of the first's boxes with a box
    of the second at IoU >= 0.7, which a precision that moves boxes by a pixel still meets).
    Nones when the first saved no box."""
    from torchvision.ops import box_iou

    matched = overlapped = total = identical = 0
    for rb, boxes in zip(ref_boxes, path_boxes):
        total += len(rb)
        if len(rb) and len(boxes):
            close = (np.abs(rb[:, None, :] - boxes[None, :, :]) <= 0.5).all(axis=2)
            matched += int(close.any(axis=1).sum())
            iou = box_iou(torch.from_numpy(rb).double(), torch.from_numpy(boxes).double())
            overlapped += int((iou.max(dim=1).values >= 0.7).sum())
        identical += int(rb.shape == boxes.shape and np.abs(rb - boxes).max(initial=0) <= 0.5)
    if not total:
        return None, identical, None
    return matched / total, identical, overlapped / total


def features_on_boxes(model: GeneralizedRCNN, batch: torch.Tensor, sizes, boxes: list[torch.Tensor],
                      autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """(R, D) saved features of given boxes (input pixels), computed as `extract_batch` computes
    them: backbone and res5 under the autocast, RoIPool and the mean in float32, IEEE fp32."""
    from detector.device import ieee_fp32

    amp = (torch.autocast(batch.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    memory_format = torch.channels_last if model._channels_last() else torch.contiguous_format
    with torch.inference_mode(), ieee_fp32(batch.device):
        with amp:
            res4 = model.backbone(batch.contiguous(memory_format=memory_format), sizes)["res4"]
        x = model.roi_heads.pool(res4, boxes).to(dtype=autocast_dtype or torch.float32, memory_format=memory_format)
        with amp:
            x = model.roi_heads.res5(x)
        return x.mean(dim=(2, 3), dtype=torch.float32)


def fp32_proposals(model: GeneralizedRCNN, batch: torch.Tensor, sizes) -> list[torch.Tensor]:
    from detector.device import ieee_fp32

    with torch.inference_mode(), ieee_fp32(batch.device):
        res4 = model.backbone(batch, sizes)["res4"]
        rpn_out = model.proposal_generator.predict(res4, model.backbone.feature_sizes(sizes))
        proposals, _ = model.proposal_generator.find_top_proposals(rpn_out, sizes)
    return proposals


def feature_difference(ref: torch.Tensor, other: torch.Tensor) -> tuple[float | None, float | None]:
    """(max |diff| / max |ref|, mean cosine similarity over the regions whose reference
    feature is not all zero: a cosine of two zero vectors says nothing); Nones on no regions."""
    if ref.numel() == 0:
        return None, None
    scale = max(float(ref.abs().max()), 1e-12)
    worst = float((other - ref).abs().max()) / scale
    nonzero = ref.norm(dim=1) > 0
    if not bool(nonzero.any()):
        return worst, None
    return worst, float(torch.nn.functional.cosine_similarity(other[nonzero], ref[nonzero], dim=1).mean())


def res5_flops_per_roi(model: GeneralizedRCNN, device) -> int:
    r = model.cfg.roi_heads.pooler_resolution
    x = torch.zeros(1, model.cfg.resnet.res4_channels, r, r, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.roi_heads.res5(x).mean(dim=(2, 3))
    return counter.get_total_flops()


def proposals_column(counts: list[int]) -> str:
    return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"


def fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{spec}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="vg-r101-c4,tiny")
    ap.add_argument("--images", type=int, default=2, help="vg-r101-c4 takes ~5-15 s per image per path on 2 cores")
    ap.add_argument("--batch-sizes", default="1,2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    ap.add_argument("--threads", type=int, default=2, help="decode threads of the fast path")
    ap.add_argument("--given-box-images", type=int, default=1,
                    help="images whose fp32 proposals every precision's features are compared on")
    ap.add_argument("--sizes", default="480x640,600x800,640x480,600x1000",
                    help="raw JPEG sizes HxW, used in turn (vg-r101-c4 resizes to 600 short / 1000 long)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_extract: --device cuda but torch sees no CUDA device")
    precisions = [p for p in args.precisions.split(",") if p]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise SystemExit(f"bench_extract: --precisions takes {', '.join(PRECISIONS)}, not {args.precisions!r}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    sizes = parse_sizes(args.sizes)
    on_cuda = device.type == "cuda"

    print(machine_line())
    if on_cuda:
        print(device_line(args.device))
    nominal = nominal_peak_tflops(args.device)
    dtypes = {p: getattr(torch, AUTOCAST[PRECISIONS[p]]) if PRECISIONS[p] else torch.float32 for p in precisions}
    dtypes.setdefault("fp32", torch.float32)
    peaks = MatmulPeak(dtypes, args.device)
    print(f"# matmul peak at the start (square GEMM, torch threads as above): {peaks.describe()}")
    print(f"# device {device}, {args.images} JPEGs of {args.sizes} (in turn), decode threads {args.threads}; "
          + ("each configuration run untimed, timed, then with part timers" if on_cuda
             else "each path warmed up on one image first (untimed)"))
    out = {"machine": machine_line(), "device": args.device, "peaks": {}, "rows": [], "complete": True,
           "problem": None}

    def write_json() -> None:
        if args.json:
            out["peaks"] = {k: peaks[k] for k in dtypes}
            Path(args.json).write_text(json.dumps(out, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), args.images, sizes)
        entries = discover_images(tmp)
        for name in args.presets.split(","):
            plain = Extractor(resolve_spec(name, "random", device=args.device), fold_norms=False).model
            plain = plain.to(memory_format=torch.contiguous_format)
            init_rpn_head_as_reference_(plain)
            wanted = plain.cfg.rpn.post_nms_topk_test
            per_roi = res5_flops_per_roi(plain, device)
            # every image's FLOPs, and the reference's warm-up (cuDNN autotuning on CUDA)
            _, _, _, flops = run_reference(plain, entries, device, count=True)
            image_flops = sum(flops)
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)
            secs, timings, ref_out = run_reference(plain, entries, device)[:3]
            ref_rate = len(entries) / secs
            ref_boxes = [r.boxes.cpu().numpy() for r in ref_out]
            n = len(entries)
            rows, short, fp32_boxes = [], {}, {}

            def row(label, precision, bs, seconds, part_times, counts, boxes_vs_ref, boxes_vs_fp32, mem):
                if min(counts) < wanted:
                    short[label] = counts
                rate = n / seconds
                res5_s = part_times.get("res5")
                res5_gflops = per_roi * sum(counts) / res5_s / 1e9 if res5_s else None
                gflops = image_flops * rate / n / 1e9
                rows.append({
                    "preset": name, "device": args.device, "path": label, "precision": precision, "batch": bs,
                    "images": n, "img_per_s": rate, "s_per_img": 1 / rate, "x_ref": rate / ref_rate,
                    **{f"{p}_s_per_img": part_times.get(p, 0.0) / n for p in PARTS},
                    "proposals": proposals_column(counts), "gflop_per_s": gflops, "frac_peak": None,
                    "frac_nominal": None, "res5_gflop_per_s": res5_gflops, "res5_frac_peak": None,
                    "res5_frac_nominal": None,
                    "boxes_vs_ref": boxes_vs_ref[0], "same_images_vs_ref": boxes_vs_ref[1],
                    "iou70_vs_ref": boxes_vs_ref[2], "boxes_vs_fp32": boxes_vs_fp32[0],
                    "iou70_vs_fp32": boxes_vs_fp32[2], "peak_mib": mem,
                    "decode": "nvjpeg" if label.startswith("fast") and jpeg_on_device else "pil",
                    "feat_maxrel_vs_ref": None, "feat_cos_vs_ref": None})

            def peak_mib():
                return torch.cuda.max_memory_allocated(device) / 2**20 if on_cuda else None

            jpeg_on_device = False
            row("reference (b1, fp32, inline)", "fp32", 1, secs, timings, [r.num_proposals for r in ref_out],
                (1.0, n, 1.0), (None, 0, None), peak_mib())
            fast_models = {}
            for precision in precisions:
                fast = Extractor(resolve_spec(name, "random", device=args.device, autocast=PRECISIONS[precision]))
                init_rpn_head_as_reference_(fast.model)
                jpeg_on_device = fast.jpeg_on_device
                if not on_cuda:
                    run_fast(fast, entries[:1], 1, args.threads)                  # warm-up
                for bs in batch_sizes:
                    if bs > n:
                        continue
                    if on_cuda:
                        run_fast(fast, entries, bs, args.threads)                  # autotuning, allocator
                        torch.cuda.reset_peak_memory_stats(device)
                    part_times: dict[str, float] = {}
                    secs, done, counts = run_fast(fast, entries, bs, args.threads, None if on_cuda else part_times)
                    mem = peak_mib()
                    if on_cuda:
                        run_fast(fast, entries, bs, args.threads, part_times)      # the parts, synchronised
                    boxes = [d.boxes for d in done]
                    if precision == "fp32":
                        fp32_boxes[bs] = boxes
                    vs_fp32 = box_agreement(fp32_boxes[bs], boxes) if precision != "fp32" and bs in fp32_boxes \
                        else (None, 0, None)
                    row(f"fast b{bs} {precision}", precision, bs, secs, part_times, counts,
                        box_agreement(ref_boxes, boxes), vs_fp32, mem)
                fast_models[precision] = fast

            if short:
                detail = "; ".join(f"{label}: {counts}" for label, counts in short.items())
                out["complete"] = False
                out["problem"] = (f"preset {name}: fewer than the configured {wanted} post-NMS proposals per image "
                                  f"reached the RoI head ({detail})")
                out["rows"] += rows
                write_json()
                raise SystemExit(f"bench_extract: {out['problem']}; the times would not measure the real work, "
                                 f"so no table is printed")

            # the same proposals for every precision: the feature difference is then always measured
            given = entries[:args.given_box_images]
            ref_feats, others = [], {k: [] for k in fast_models}
            for e in given:
                _, batch, sizes_ = prepared(e, plain.cfg)
                batch = batch.to(device)
                proposals = fp32_proposals(plain, batch, sizes_)
                ref_feats.append(features_on_boxes(plain, batch, sizes_, proposals, None))
                for key, fast in fast_models.items():
                    others[key].append(features_on_boxes(fast.model, batch, sizes_, proposals, fast.autocast_dtype))
            differences = {k: feature_difference(torch.cat(ref_feats), torch.cat(f)) for k, f in others.items()}
            for r in rows:
                if r["path"].startswith("fast"):
                    r["feat_maxrel_vs_ref"], r["feat_cos_vs_ref"] = differences[r["precision"]]

            peaks.measure()
            for r in rows:   # fractions of the best peak, measured before this table too
                peak = peaks[r["precision"]]
                nominal_gflops = nominal.get(r["precision"], 0) * 1e3
                r["frac_peak"] = r["gflop_per_s"] / peak
                r["frac_nominal"] = r["gflop_per_s"] / nominal_gflops if nominal_gflops else None
                if r["res5_gflop_per_s"] is not None:
                    r["res5_frac_peak"] = r["res5_gflop_per_s"] / peak
                    r["res5_frac_nominal"] = r["res5_gflop_per_s"] / nominal_gflops if nominal_gflops else None
            print(f"\n## {name}: feature dim {plain.cfg.feature_dim}, {wanted} post-NMS proposals per image "
                  f"(every path, every image), input {plain.cfg.input.min_size}/{plain.cfg.input.max_size}, "
                  f"{image_flops / n / 1e9:.1f} GFLOP per image (counted, reference path, mean of {n}), res5 "
                  f"{per_roi / 1e9:.2f} GFLOP per RoI; load average {load_average()}")
            print(f"matmul peak, best of this run's measurements (start, before each table): {peaks.describe()}")
            print(f"{'path':<30} {'img/s':>8} {'s/img':>7} {'x ref':>6}  {'backbone':>8} {'rpn':>7} {'roipool':>7} "
                  f"{'res5':>7} {'pred+sel':>8}  {'props':>7} {'GFLOP/s':>9} {'of peak':>7} {'res5 GF/s':>9} "
                  f"{'of peak':>7}  {'boxes as ref':<20} {'iou.7':>5} {'vs fp32':>7} {'iou.7':>5} {'feat cos':>9}"
                  + (f" {'of nominal':>10} {'res5 nom':>8} {'peak MiB':>8}" if on_cuda else ""))
            for r in rows:
                same = f"{r['boxes_vs_ref']:.2f} ({r['same_images_vs_ref']}/{n} img same)" \
                    if r["boxes_vs_ref"] is not None else "n/a"
                line = (f"{r['path']:<30} {r['img_per_s']:8.3f} {r['s_per_img']:7.3f} {r['x_ref']:6.2f}  "
                        + " ".join(f"{r[p + '_s_per_img']:{8 if p in ('backbone', 'predictor_selection') else 7}.3f}"
                                   for p in PARTS)
                        + f"  {r['proposals']:>7} {r['gflop_per_s']:9.1f} {r['frac_peak']:7.1%} "
                        + fmt(r["res5_gflop_per_s"], ".1f", 9) + " "
                        + (f"{r['res5_frac_peak']:7.1%}" if r["res5_frac_peak"] is not None else f"{'-':>7}")
                        + f"  {same:<20} " + fmt(r["iou70_vs_ref"], ".2f", 5) + " "
                        + fmt(r["boxes_vs_fp32"], ".2f", 7) + " " + fmt(r["iou70_vs_fp32"], ".2f", 5) + " "
                        + fmt(r["feat_cos_vs_ref"], ".6f", 9))
                if on_cuda:
                    line += (" " + (f"{r['frac_nominal']:10.1%}" if r["frac_nominal"] is not None else f"{'-':>10}")
                             + " " + (f"{r['res5_frac_nominal']:8.1%}" if r["res5_frac_nominal"] is not None
                                      else f"{'-':>8}") + f" {r['peak_mib']:8.0f}")
                print(line)
            print(f"features on the reference's fp32 proposals (given-box mode, {len(given)} images x {wanted} "
                  f"proposals) vs the reference path, max |diff| / max |ref|: "
                  + ", ".join(f"{k} {fmt(v[0], '.2e', 0)}" for k, v in differences.items()))
            out["rows"] += rows
            del plain, fast_models
            if on_cuda:
                torch.cuda.empty_cache()
    write_json()
    print(f"\n# load average at the end {load_average()}")


if __name__ == "__main__":
    main()
