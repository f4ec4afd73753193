"""`lxmert-pipeline synth --out DIR [--images N] [--seed S]`: write a synthetic data root."""

from __future__ import annotations

import argparse

SYNTH_ENTRIES = {"images", "vg", "coco", "vqa", "gqa", "nlvr2", "README.md", "synth_summary.json"}
HELP = "write a synthetic vision-and-language world (images + VG/COCO/VQA/GQA/NLVR2 files) to DIR"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="data root to write (created)")
    parser.add_argument("--images", type=int, default=1000, metavar="N", help="number of images (default 1000, at least 60)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; same seed, same files")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="rendering processes (default: the CPU count, at most 8)")
    parser.add_argument("--shapes", default=None, metavar="LIST",
                        help="comma-separated object classes to use (default: all 10)")
    parser.add_argument("--colors", default=None, metavar="LIST",
                        help="comma-separated colours to use (default: all 11)")
    parser.add_argument("--no-baselines", action="store_true", help="skip measuring the question-only baselines")


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from pipeline.errors import UsageError
    from pipeline.synth.layout import MIN_IMAGES
    from pipeline.synth.world import WorldConfig
    from pipeline.synth.world_root import write_world

    if args.images < MIN_IMAGES:
        raise UsageError(f"--images must be at least {MIN_IMAGES} (every split needs images)")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    kwargs = {}
    if args.shapes:
        kwargs["shapes"] = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    if args.colors:
        kwargs["colors"] = tuple(s.strip() for s in args.colors.split(",") if s.strip())
    try:
        cfg = WorldConfig(**kwargs)
    except ValueError as err:
        raise UsageError(str(err)) from None
    # rewriting a synthetic root (even a half-written one) is fine; anything else is not ours to touch
    if os.path.isdir(args.out):
        foreign = sorted(set(os.listdir(args.out)) - SYNTH_ENTRIES)
        if foreign:
            raise UsageError(f"{args.out} holds files synth did not write ({', '.join(foreign[:3])}); "
                             "choose an empty or new directory")

    summary = write_world(args.out, images=args.images, seed=args.seed, cfg=cfg, workers=args.workers,
                          baselines=not args.no_baselines)
    sec = summary["seconds"]
    print(f"wrote {summary['images']} images to {args.out} in {sum(sec.values()):.1f} s "
          f"(render {sec['render']:.1f} s, annotations {sec['annotations']:.1f} s)")
    for name, b in summary.get("baselines", {}).items():
        extra = {k: v for k, v in b.items() if k not in ("split", "question_only")}
        print(f"question-only {name} {b['split']}: {b['question_only']:.2f}  {json.dumps(extra)}")
    return 0
