"""`lxmert-pipeline extract`: a folder of images -> a feature store of region features."""

from __future__ import annotations

import argparse
import sys

HELP = "run the VG Faster R-CNN over a folder of images and write a Parquet feature store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, metavar="DIR",
                        help="folder searched recursively for .jpg/.jpeg/.png; image_id = file name without extension")
    parser.add_argument("--out", required=True, metavar="DIR", help="feature store folder (re-running resumes)")
    parser.add_argument("--preset", default="vg-r101-c4", help="detector preset: vg-r101-c4 (default), tiny, small")
    parser.add_argument("--weights", metavar="PATH",
                        help="faster_rcnn_from_caffe_attr.pkl, pytorch_model.bin, a train-detector checkpoint "
                             "folder, or 'random' (tests/benchmarks only); default for vg-r101-c4: the cache "
                             "folder ($LXMERT_PIPELINE_CACHE or ~/.cache/lxmert-pipeline/detector)")
    parser.add_argument("--min-boxes", type=int, help="fewest boxes per image (default 36; 10 for adaptive)")
    parser.add_argument("--max-boxes", type=int, help="most boxes per image (default 36; 100 for adaptive)")
    parser.add_argument("--selection", choices=("caffe", "max_class"),
                        help="box rule: caffe = LXMERT reference (default), max_class = AIR/HF max-class NMS")
    parser.add_argument("--vocab-dir", metavar="DIR",
                        help="folder with objects_vocab.txt [and attributes_vocab.txt] setting the label space")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (padded)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--autocast", choices=("bf16", "fp16"), help="convolutions in bf16/fp16 (boxes stay fp32)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, help="local Dask workers (default: one per GPU, or one on CPU)")
    group.add_argument("--scheduler", metavar="ADDR", help="use an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per Parquet shard / Dask task")
    parser.add_argument("--decode-threads", type=int, default=2, help="image-decoding threads per worker")
    parser.add_argument("--retries", type=int, default=2, help="retries of a shard task that raised")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    parser.add_argument("--retry-failed", action="store_true",
                        help="extract again the images that failed in an earlier run (after fixing them) and add "
                             "them to their shards")


def run(args: argparse.Namespace) -> int:
    from pipeline.extract import resolve_spec
    from pipeline.stages.extract import extract
    from workflows.cluster import absolute
    from workflows.executors import DaskExecutor

    args.images, args.out, args.vocab_dir = absolute(args.images), absolute(args.out), absolute(args.vocab_dir)
    args.weights = absolute(args.weights, only_if_exists=True)

    selection = {"min_boxes": args.min_boxes, "max_boxes": args.max_boxes, "method": args.selection}
    spec = resolve_spec(args.preset, args.weights, device=args.device, autocast=args.autocast,
                        selection=selection, vocab_dir=args.vocab_dir)
    with DaskExecutor(workers=args.workers, scheduler=args.scheduler, device=args.device) as dask:
        summary = extract(args.images, args.out, spec, dask, shard_size=args.shard_size, batch_size=args.batch_size,
                          feature_dtype=args.dtype, decode_threads=args.decode_threads, retries=args.retries,
                          progress=not args.no_progress, retry_failed=args.retry_failed)
    for line in summary.lines():
        print(line, file=sys.stderr)
    return 1 if summary.failed else 0
