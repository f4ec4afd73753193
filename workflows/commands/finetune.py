"""`lxmert-pipeline finetune`: LXMERT on VQA v2, GQA or NLVR2, on Dask (one worker, or DDP)."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "fine-tune LXMERT on VQA v2, GQA or NLVR2 (from a pretraining run, a checkpoint, or from scratch)"

_EPILOG = """\
defaults are the reference recipes (airsplay/lxmert run/*_finetune.bash) for paper-width
models: 4 epochs, batch 32, BertAdam with lr 5e-5 (GQA 1e-5), warm-up 0.1, gradient clip 5.0;
narrower models (tiny, small: CPU runs on synthetic worlds) default to 10 epochs of AdamW at
lr 1e-3 (warm-up 0.05, clip 5.0). Splits:
  vqa    --train train2014 --valid val2014     (LXMERT's: --train train,nominival --valid minival,
                                               read from lxmert/vqa/*.json)
  gqa    --train train,val --valid testdev
  nlvr2  --train train --valid dev
The run keeps RUN/final/ (the last model) and RUN/best/ (the best validation accuracy);
`evaluate --run RUN` predicts with best/.

--init takes a pretraining run (its final/), a transformers-format directory, an original
LXMERT .pth (with --vocab, and --init-answers all_ans.json to carry the answer rows over),
or none (from scratch: --preset chooses the network, the vocabulary comes from --vocab or
is learnt on the training questions).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from workflows.commands.training_options import add_training_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--task", required=True, choices=("vqa", "gqa", "nlvr2"))
    parser.add_argument("--init", metavar="RUN_OR_DIR",
                        help="pretraining run, transformers-format directory, original .pth, or none (from scratch)")
    parser.add_argument("--features", metavar="DIR", help="feature store of the task's images")
    parser.add_argument("--data", metavar="DIR", help="data root (vqa/, gqa/, nlvr2/, lxmert/)")
    parser.add_argument("--train", metavar="SPLITS", help="comma-separated training splits (default: the reference's)")
    parser.add_argument("--valid", metavar="SPLIT", help="validation split that selects best/; 'none' for none")
    parser.add_argument("--preset", help="with --init none: the network (tiny, small, base; default base); with an "
                                         "original .pth: its head count")
    parser.add_argument("--vocab", metavar="PATH", help="vocab.txt, a folder or run holding one, or a hub name")
    parser.add_argument("--answers", metavar="FILE",
                        help="answer vocabulary (label2ans list, ans2label map or all_ans.json); default: the "
                             "reference rule (VQA: answers of >= 9 questions over train+valid; GQA: train answers)")
    parser.add_argument("--answer-min-count", type=int, metavar="N",
                        help="VQA rule's minimum question count (default 9)")
    parser.add_argument("--init-answers", metavar="FILE",
                        help="the answer names of an original checkpoint's head (LXMERT's all_ans.json)")
    parser.add_argument("--loss", choices=("bce", "ce"),
                        help="GQA: bce (reference default, soft targets) or ce (--mceLoss)")
    parser.add_argument("--language-only", action="store_true",
                        help="blank every image (features and boxes zero): the text-only baseline")
    add_training_arguments(parser)


_OPTION_FLAGS = {"task": "task", "init": "init", "features": "features", "data": "data", "preset": "preset",
                 "vocab": "vocab", "answers": "answers", "answer_min_count": "answer_min_count",
                 "init_answers": "init_answers", "loss": "loss", "valid": "valid_split"}


def finetune_options(args: argparse.Namespace, file_options: dict):
    """`FinetuneOptions` from the options file's `task:` section, then the flags."""
    from pipeline.errors import UsageError
    from pipeline.stages.finetune import FinetuneOptions

    values = dict(file_options.get("task", {}))
    for flag, name in _OPTION_FLAGS.items():
        if getattr(args, flag, None) is not None:
            values[name] = getattr(args, flag)
    if args.train:
        values["train_splits"] = [s.strip() for s in args.train.split(",") if s.strip()]
    if args.language_only:
        values["language_only"] = True
    for required in ("features", "data"):
        if not values.get(required):
            raise UsageError(f"--{required} is required (or `{required}:` in the options file's task section)")
    # absolute here: the run's workers may sit in other folders or on other hosts
    from workflows.cluster import absolute

    for name in ("features", "data", "answers", "init_answers"):
        values[name] = absolute(values.get(name))
    for name in ("init", "vocab"):      # also a keyword (none) or a hub name
        values[name] = absolute(values.get(name), only_if_exists=True)
    return FinetuneOptions.from_dict(values)


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.finetune import finetune
    from workflows.commands.training_options import executor, flag_train_settings, read_options_file

    from workflows.cluster import absolute

    args.out = absolute(args.out)
    file_options = read_options_file(args.config)
    options = finetune_options(args, file_options)
    layers = (file_options["train"], flag_train_settings(args))
    with executor(args, layers) as dask:
        result = finetune(options, args.out, dask, layers=layers, resume=args.resume)
    init = result["init"]
    if init.get("answers_total") is not None:
        print(f"init: {init['answers_matched']} of {init['answers_total']} answers matched by name "
              f"in {init['path']}", file=sys.stderr)
    print(f"{options.task}: {result['step']} steps; final model {result['final_dir']}", file=sys.stderr)
    best = result["best"]
    if best is not None:
        print(f"best validation {best['metric']} {best['value']:.2f} at step {best['step']}: "
              f"{os.path.join(args.out, 'best')}", file=sys.stderr)
    return 0
