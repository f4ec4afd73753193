"""`lxmert-pipeline demo --out DIR [--quick]`: the whole method on the synthetic world."""

from __future__ import annotations

import argparse
import sys

HELP = "the whole method on the built-in synthetic world, ending in the paper's ablation table (CPU is enough)"

_EPILOG = """\
Writes a synthetic world, trains the detector, extracts features, pretrains LXMERT and
fine-tunes it on VQA, GQA and NLVR2 three ways (language only, from scratch, pretrained),
all through `lxmert-pipeline run`'s Dask graph, then scores them with the official metrics:
  DIR/results.md, DIR/results.json    the table ({task: {variant: {metric: value}}})
  DIR/pictures/*.png                  detections, loss curves, a cross-attention map
  DIR/pipeline.yaml                   the run config (re-run with `lxmert-pipeline run --config`)
About 16 minutes on 2 CPU cores; --quick runs every stage small, in under 3 minutes.
Re-running with the same DIR resumes: finished stages are skipped.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--out", required=True, metavar="DIR", help="where the world, runs, pictures and table go")
    parser.add_argument("--quick", action="store_true", help="every stage small: a smoke test in under 3 minutes")
    parser.add_argument("--workers", type=int, help="local Dask workers (default 2 where there are 2 cores, else 1)")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic world's seed")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workflows.demo import run_demo, run_name

    run_demo(args.out, quick=args.quick, workers=args.workers, seed=args.seed)
    table = (Path(args.out) / "results.md").read_text(encoding="utf-8")
    print(table)
    print(f"results: {Path(args.out) / 'results.json'}; pictures: {Path(args.out) / 'pictures'}", file=sys.stderr)
    vqa = Path(args.out) / "runs" / "finetune" / run_name("vqa", "pretrained")
    print(f"ask the fine-tuned VQA model about pictures in a browser: lxmert-pipeline serve --run {vqa}",
          file=sys.stderr)
    return 0
