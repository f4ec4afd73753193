"""`lxmert-pipeline pretrain`: LXMERT's five pretraining tasks on a feature store and a data root.

    lxmert-pipeline pretrain --features F --data D --out RUN [--preset base|small|tiny|demo]
        [--config FILE] [--steps N | --epochs N] [--batch-size B] [--lr LR]
        [--workers N | --scheduler ADDR] [--resume]

Settings: the preset's recipe (pipeline/pretraining/recipe.py), then the --config file
(`train:` loop settings, `task:` PretrainOptions), then flags. A resumed run keeps its
recorded settings (flags may still change e.g. --steps) and its prepared examples.
"""

from __future__ import annotations

import argparse
import sys

from workflows.commands.training_options import add_training_arguments

HELP = "pretrain LXMERT (masked LM, matching, masked objects, QA) on a feature store and a data root"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", required=True, metavar="DIR", help="feature store (lxmert-pipeline extract)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="data root: COCO captions, VQA, VG, GQA files, or LXMERT's lxmert/*.json")
    parser.add_argument("--preset", default="base",
                        help="model size: base (the paper's; reference recipe), small, demo, tiny (CPU recipe)")
    parser.add_argument("--vocab", metavar="PATH",
                        help="WordPiece vocabulary: vocab.txt, a folder or run holding one, or a hub name "
                             "(default: learnt on the pretraining sentences and the data root's fine-tuning "
                             "training sentences)")
    parser.add_argument("--answers", metavar="JSON",
                        help="pretraining answer table (LXMERT's all_ans.json, a list, or ans2label; "
                             "default: the training QA answers, most frequent first)")
    parser.add_argument("--sources", metavar="LIST", help="sentence sources, comma-separated "
                        "(default: all found of mscoco,vg,vqa,gqa,vgqa,visual7w)")
    parser.add_argument("--qa-from-epoch", type=int, metavar="K",
                        help="train the QA task from epoch K (the paper: 10 of 20 epochs without QA)")
    parser.add_argument("--visual-loss-scope", choices=("all", "masked"),
                        help="obj/attr losses on all objects weighted by confidence (reference) or masked only")
    parser.add_argument("--visual-loss-normalizer", type=float, metavar="X",
                        help="factor of each visual loss's mean over objects (reference: 1/0.15)")
    add_training_arguments(parser)


def _task_options(args: argparse.Namespace, file_options: dict):
    from pipeline.errors import UsageError
    from pipeline.pretraining.options import PretrainOptions

    values = dict(file_options.get("task", {}))
    flags = {"sources": args.sources.split(",") if args.sources else None, "qa_from_epoch": args.qa_from_epoch,
             "visual_label_loss_scope": args.visual_loss_scope,
             "visual_loss_normalizer": args.visual_loss_normalizer}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return PretrainOptions.from_dict(values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"pretraining options: {err}") from None


def run(args: argparse.Namespace) -> int:
    from pipeline.stages.pretrain import pretrain
    from workflows.commands.training_options import absolute_paths, executor, flag_train_settings, read_options_file

    absolute_paths(args, ("features", "data", "out", "answers"), maybe=("vocab",))
    file_options = read_options_file(args.config)
    options = None if args.resume else _task_options(args, file_options)
    layers = (file_options["train"], flag_train_settings(args))
    with executor(args, layers) as dask:
        result = pretrain(args.features, args.data, args.out, dask, preset=args.preset, options=options,
                          vocab=args.vocab, answers=args.answers, layers=layers, resume=args.resume)
    for split, counts in result["summary"].items():
        if isinstance(counts, dict) and counts.get("missing_images"):
            print(f"{split}: {counts['missing_sentences']} sentences of {counts['missing_images']} images skipped "
                  f"(not in the feature store {args.features})", file=sys.stderr)
    last = result.get("last_metrics") or {}
    losses = "  ".join(f"{k} {v:.3f}" for k, v in last.items() if k in ("loss", *result["objectives"]))
    print(f"pretrained {result['step']} of {result['total_steps']} steps; {losses}", file=sys.stderr)
    if result.get("final_dir"):
        print(f"model: {result['final_dir']}", file=sys.stderr)
    return 0
