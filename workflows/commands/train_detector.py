"""`lxmert-pipeline train-detector`: train the VG Faster R-CNN on Visual Genome-format files.

    lxmert-pipeline train-detector --data ROOT --preset synth --out RUN [--steps N | --epochs E]

ROOT is a data root (vg/objects.json, vg/attributes.json, vg/image_data.json,
vg/objects_vocab.txt, vg/attributes_vocab.txt, images/). The stage is
`pipeline/stages/train_detector.py`; the flags are those of every training command, and
`--resume` continues a killed run from its last checkpoint with the same options.
"""

from __future__ import annotations

import argparse
import sys

from workflows.commands.training_options import add_training_arguments

HELP = "train the VG Faster R-CNN (detector/) on Visual Genome-format annotations; writes a checkpoint extract loads"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="data root: vg/{objects,attributes,image_data}.json, vg/*_vocab.txt, images/")
    parser.add_argument("--preset", default="synth",
                        help="detector preset: synth (default; the synthetic world), tiny, small, vg-r101-c4")
    parser.add_argument("--config", metavar="YAML", help="detector config sections overriding the preset "
                        "(e.g. a RUN/final/config.yaml, or {rpn: {post_nms_topk_train: 500}})")
    parser.add_argument("--init", metavar="WEIGHTS", help="start from these weights (a train-detector checkpoint "
                        "folder, faster_rcnn_from_caffe_attr.pkl, pytorch_model.bin); default: random")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of images held out for box mAP (by a hash of the image id; default 0.1)")
    add_training_arguments(parser, options_file=False)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.train_detector import train_detector
    from workflows.commands.training_options import absolute_paths, executor, flag_train_settings

    absolute_paths(args, ("data", "out", "config", "init"))
    layers = (flag_train_settings(args),)
    with executor(args, layers) as dask:
        results = train_detector(args.data, args.out, dask, preset=args.preset, config=args.config, init=args.init,
                                 val_fraction=args.val_fraction, layers=layers, resume=args.resume)
    val = results["validation"] or {}
    print(f"train-detector: step {results['step']}/{results['total_steps']}, box AP {val.get('AP', float('nan')):.3f}, "
          f"AP50 {val.get('AP50', float('nan')):.3f} on {results['val_images']} held-out images; "
          f"weights in {results['final']} (lxmert-pipeline extract --weights {results['final']})", file=sys.stderr)
    return 0
