"""`lxmert-pipeline evaluate`: the official VQA v2 / GQA / NLVR2 metrics for one split."""

from __future__ import annotations

import argparse
import sys

HELP = "score a run or a predictions file on a split with the official VQA/GQA/NLVR2 metrics"

_EPILOG = """\
predictions files use the official submission formats:
  vqa    json [{"question_id": int, "answer": str}]
  gqa    json [{"questionId": str, "prediction": str}]
  nlvr2  csv lines identifier,True|False

The split's files are looked up under --data as the datasets ship them:
  vqa/v2_mscoco_{split}_annotations.json
  gqa/{split}_all_questions.json (else {split}_balanced_questions.json), gqa/{split}_choices.json
  nlvr2/{split}.json

Questions without a prediction are counted and scored as wrong answers (the official
scripts refuse such files); --strict refuses too. Metrics whose input is absent (no
choices file, no predictions for entailed GQA questions) are reported as n/a, never 0.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--task", required=True, choices=("vqa", "gqa", "nlvr2"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN", help="a fine-tuning run directory: predict the split with it")
    source.add_argument("--predictions", metavar="FILE", help="a predictions file in the official submission format")
    parser.add_argument("--data", required=True, metavar="DIR", help="data root (vqa/, gqa/, nlvr2/)")
    parser.add_argument("--split", required=True, help="e.g. val2014 (vqa), testdev (gqa), dev (nlvr2)")
    parser.add_argument("--out", metavar="DIR",
                        help="where results.json and the submission file go (default: the run directory; "
                             "required with --predictions)")
    parser.add_argument("--features", metavar="DIR",
                        help="with --run: the feature store to read (default: the one the run was trained on)")
    parser.add_argument("--checkpoint", choices=("best", "final"),
                        help="with --run: the model to use (default: best/ when the run has one, else final/)")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="with --run: predict in fp32 (default) or with bf16 weights and autocast (about 2x "
                             "faster on GPUs and bf16-capable CPUs; answers within bf16 rounding may change)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse predictions that miss questions, as the official scripts do")
    parser.add_argument("--vqa-eval", choices=("2021", "2017"), default="2021",
                        help="VQA evaluator behaviour: the current official vqaEval.py (2021, default) or the "
                             "2016-2021 one (2017)")


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation.evaluate import results_record
    from pipeline.evaluation.results_table import format_table
    from pipeline.stages.evaluate import evaluate

    options = {k: v for k, v in (("features", args.features), ("checkpoint", args.checkpoint),
                                 ("precision", args.precision)) if v}
    evaluation, results_path, submission_path = evaluate(
        args.task, args.data, args.split, run=None if args.predictions else args.run, predictions=args.predictions,
        out=args.out, strict=args.strict, vqa_version=args.vqa_eval, **options)
    print(format_table(results_record(evaluation, submission_path)))
    print(f"results: {results_path}", file=sys.stderr)
    return 0
