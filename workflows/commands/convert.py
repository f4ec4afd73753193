"""`lxmert-pipeline convert --from CHECKPOINT --to DIR`: any LXMERT checkpoint to a transformers directory.

CHECKPOINT is an original airsplay/lxmert `.pth` (pretraining `model_LXRT.pth` /
`Epoch20_LXRT.pth`, or a fine-tuned VQA/GQA/NLVR2 `BEST.pth`), a transformers/hub-format
directory, or a run directory of this project (its newest checkpoint, `best` preferred).
DIR gets `config.json` + `model.safetensors`, which `transformers.LxmertForPreTraining`
(or `LxmertForQuestionAnswering`) `.from_pretrained(DIR)` loads.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pipeline.errors import PipelineError, UsageError

HELP = "convert an LXMERT checkpoint (original .pth, transformers dir, run) to a transformers directory"

log = logging.getLogger(__name__)

MODEL_KINDS = {"pretraining": "LxmertForPreTraining", "qa": "LxmertForQuestionAnswering",
               "nlvr2": "LxmertForNLVR2", "backbone": "LxmertModel"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, metavar="CHECKPOINT",
                        help="original .pth, transformers-format directory, or run directory")
    parser.add_argument("--to", dest="target", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--model", choices=sorted(MODEL_KINDS), default=None,
                        help="model to write (default: the checkpoint's own)")
    parser.add_argument("--answers", metavar="JSON", default=None,
                        help="target answer list (label2ans list or ans2label dict) for a QA head; "
                             "rows are copied from the source head by answer string")
    parser.add_argument("--source-answers", metavar="JSON", default=None,
                        help="answers of the checkpoint's QA head (e.g. LXMERT's all_ans.json) when "
                             "the checkpoint does not name them")
    parser.add_argument("--num-attention-heads", type=int, default=None,
                        help="heads of an original .pth (default hidden/64, as BERT)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty DIR")


def _read_answers(path: str | None):
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise PipelineError("no such answer file", path) from None
    except (OSError, ValueError) as err:
        raise PipelineError(f"not a JSON answer list ({err})", path) from None


def find_checkpoint(source: Path) -> Path:
    """A file or a directory with config.json as it is; in a run directory, the checkpoint
    directory named best, else the newest one."""
    if source.is_file() or (source / "config.json").is_file():
        return source
    if not source.is_dir():
        raise PipelineError("no such checkpoint file or directory", source)
    found = sorted({p.parent for pattern in ("*/model.safetensors", "*/*/model.safetensors")
                    for p in source.glob(pattern) if (p.parent / "config.json").is_file()})
    if not found:
        raise PipelineError("no checkpoint here: neither a config.json nor a sub-directory with "
                            "config.json + model.safetensors", source)
    best = [p for p in found if p.name.lower() in ("best", "best_checkpoint")]
    chosen = best[0] if best else max(found, key=lambda p: (p / "model.safetensors").stat().st_mtime)
    if len(found) > 1:
        log.info("%d checkpoints in %s; converting %s", len(found), source, chosen)
    return chosen


def run(args: argparse.Namespace) -> int:
    from model import CheckpointError, load_pretrained, save_pretrained
    from pipeline.atomic import publish_directory
    from model.modeling_lxmert import MODEL_CLASSES

    target = Path(args.target)
    if target.exists() and not target.is_dir():
        raise UsageError(f"--to {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not args.force:
        raise UsageError(f"--to {target} is not empty (pass --force to overwrite)")
    source = find_checkpoint(Path(args.source))
    model_class = MODEL_CLASSES[MODEL_KINDS[args.model]] if args.model else None
    overrides = {}
    if args.num_attention_heads:
        overrides["num_attention_heads"] = args.num_attention_heads
    try:
        model, report = load_pretrained(source, model_class, answers=_read_answers(args.answers),
                                        source_answers=_read_answers(args.source_answers),
                                        return_report=True, **overrides)
        with publish_directory(target) as staging:   # a reader never sees half a model
            save_pretrained(model, staging)
    except CheckpointError as err:
        raise PipelineError(err.message, err.path or source) from None
    except ValueError as err:  # config values that do not fit together (heads vs hidden, ...)
        raise PipelineError(str(err), source) from None
    print(f"{source} -> {target} ({model.architecture}, hidden {model.config.hidden_size}, layers "
          f"{model.config.l_layers}/{model.config.r_layers}/{model.config.x_layers}): {report.summary()}")
    return 0
