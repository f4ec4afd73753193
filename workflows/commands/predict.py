"""`lxmert-pipeline predict`: ask a fine-tuned run about any image."""

from __future__ import annotations

import argparse
import sys

HELP = "ask a fine-tuned run about an image (NLVR2: a statement about two images); prints the top answers"

_EPILOG = """\
The image's regions are extracted on the spot by the detector the run's features came
from (found beside the store, as `run` and `demo` lay it out, or in the weights cache,
checked by sha256), or by --detector. Examples:
  lxmert-pipeline predict --run runs/vqa --image cat.jpg --question "what color is the cat?"
  lxmert-pipeline predict --run runs/nlvr2 --image left.png --image right.png \\
      --question "There are two dogs." --picture attention.png
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--run", required=True, metavar="RUN", help="a fine-tuning run (its best/ model, else final/)")
    parser.add_argument("--image", required=True, action="append", metavar="PATH",
                        help="the image (twice for an NLVR2 run: left, then right)")
    parser.add_argument("--question", required=True, metavar="TEXT", help="the question (NLVR2: the statement)")
    parser.add_argument("--detector", metavar="RUN_OR_WEIGHTS",
                        help="detector weights: a train-detector run or checkpoint folder, or a weights file")
    parser.add_argument("--picture", metavar="FILE", help="also draw the regions the words attended to (PNG)")
    parser.add_argument("--top", type=int, default=5, help="how many answers to print (default 5)")
    parser.add_argument("--checkpoint", choices=("best", "final"), help="which model of the run (default: best)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.errors import UsageError
    from pipeline.extract import extract_files, spec_for_store
    from pipeline.features import load_manifest
    from pipeline.features.schema import StoreMetadata
    from pipeline.finetune.ask import ask
    from pipeline.finetune.predict import load_finetuned

    if args.top < 1:
        raise UsageError("--top must be at least 1")
    loaded = load_finetuned(args.run, checkpoint=args.checkpoint)
    expected = 2 if loaded.name == "nlvr2" else 1
    if len(args.image) != expected:
        how = "twice (left, right)" if expected == 2 else "once"
        raise UsageError(f"this run is fine-tuned for {loaded.name}: give --image {how}")
    metadata = StoreMetadata.from_dict(load_manifest(loaded.store_path)["metadata"])
    spec = spec_for_store(metadata, loaded.store_path, args.detector, device=args.device)
    images = extract_files(args.image, spec)
    loaded.model.to(args.device)
    reply = ask(loaded, args.question, images, metadata, top=args.top)
    print(f"{loaded.name}: {args.question}")
    width = max(len(a) for a, _ in reply.answers)
    for answer, prob in reply.answers:
        print(f"  {answer:<{width}}  {prob:6.3f}  {'#' * round(prob * 30)}")
    if args.picture:
        from pipeline.finetune.ask import region_names
        from pipeline.images import decode_image
        from pipeline.pictures.attention import draw_attention

        if reply.attention is None:
            print("no picture: a language-only run does not look at the image", file=sys.stderr)
        else:
            regions = images[0]
            names = region_names(regions, metadata)
            top_answer = reply.answers[0][0]
            draw_attention(decode_image(args.image[0]), regions.boxes, reply.attention, Path(args.picture),
                           title=f"{args.question}  ->  {top_answer}", region_names=names)
            print(f"picture: {args.picture}", file=sys.stderr)
    return 0
