"""`lxmert-pipeline train-detector`: train the VG Faster R-CNN on Visual Genome-format files.

    lxmert-pipeline train-detector --data ROOT --preset synth --out RUN [--steps N | --epochs E]

ROOT is a data root (vg/objects.json, vg/attributes.json, vg/image_data.json,
vg/objects_vocab.txt, vg/attributes_vocab.txt, images/). The run goes through the one
training loop on Dask (`workflows.train.run_training`): RUN/config.yaml, RUN/metrics.jsonl
(losses, and box AP / AP50 on the held-out split at each validation), RUN/checkpoints/step-*/
and RUN/final/ (each `config.yaml` + `model.safetensors` + the vocabularies: pass one to
`lxmert-pipeline extract --weights`), RUN/results.json (the final validation). `--resume`
continues a killed run from its last checkpoint with the same options.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

HELP = "train the VG Faster R-CNN (detector/) on Visual Genome-format annotations; writes a checkpoint extract loads"

log = logging.getLogger(__name__)

# options that may differ between a run and its resumption (they do not change the numbers)
_RESUME_FREE = {"progress", "num_workers", "device"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="data root: vg/{objects,attributes,image_data}.json, vg/*_vocab.txt, images/")
    parser.add_argument("--out", required=True, metavar="RUN", help="run directory (created)")
    parser.add_argument("--preset", default="synth",
                        help="detector preset: synth (default; the synthetic world), tiny, small, vg-r101-c4")
    parser.add_argument("--config", metavar="YAML", help="detector config sections overriding the preset "
                        "(e.g. a RUN/final/config.yaml, or {rpn: {post_nms_topk_train: 500}})")
    parser.add_argument("--init", metavar="WEIGHTS", help="start from these weights (a train-detector checkpoint "
                        "folder, faster_rcnn_from_caffe_attr.pkl, pytorch_model.bin); default: random")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (default: the preset's epochs)")
    length.add_argument("--epochs", type=float, help="passes over the training images")
    parser.add_argument("--batch-size", type=int, help="images per optimiser step, over all ranks")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--seed", type=int, help="seed of initialisation, batch order and augmentation")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="autocast dtype (boxes stay fp32)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of images held out for box mAP (by a hash of the image id; default 0.1)")
    parser.add_argument("--val-every", type=int, help="steps between validations (default: each epoch)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: each epoch)")
    parser.add_argument("--loader-workers", type=int, default=0,
                        help="image-decoding DataLoader processes per rank (default 0: in the training process)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, help="local Dask workers = DDP ranks (default: one per GPU, or one on CPU)")
    group.add_argument("--scheduler", metavar="ADDR", help="use an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def train_detector(data: str | Path, out: str | Path, *, preset: str = "synth", config: str | Path | None = None,
                   init: str | Path | None = None, val_fraction: float = 0.1, workers: int | None = None,
                   scheduler: str | None = None, resume: bool = False, stop_after: int | None = None,
                   client=None, **train_options: Any) -> dict[str, Any]:
    """Train a detector on the data root `data` into the run directory `out`; returns the
    content of RUN/results.json (`final` is the checkpoint folder for `extract --weights`).
    `train_options`: TrainConfig fields (steps, epochs, batch_size, lr, device, ...) over the
    preset's schedule (pipeline/detection/recipe.py)."""
    from pipeline.detection import make_task, train_config
    from pipeline.training import RunDir
    from workflows.train import run_training

    run = RunDir(out)
    run.check_writable()
    task = make_task(data, preset, config_path=config, init=init, val_fraction=val_fraction)
    dataset = task.dataset()          # the annotation errors, before a cluster starts
    train_cfg = train_config(preset, len(dataset.train), **train_options)
    if resume and run.has_run():
        _check_same_run(run, task, train_cfg)
    stats = _plain(dataset.stats)
    log.info("train-detector: %d training and %d held-out images, %d object classes, %d attributes",
             len(dataset.train), len(dataset.val), len(dataset.objects), len(dataset.attributes))
    result = run_training(task, train_cfg, run.path, workers=workers, scheduler=scheduler, resume=resume,
                          extra_config={"data_summary": stats}, stop_after=stop_after, client=client)
    return write_results(run, result, stats)


def write_results(run, result: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """RUN/results.json: the last validation (the final weights') and where they are."""
    from pipeline.atomic import write_json

    val = [m for m in run.metrics() if m.get("split") == "val"]
    results = {"task": "train-detector", "step": result["step"], "total_steps": result["total_steps"],
               "final": result["final_dir"], "validation": val[-1] if val else None,
               "train_images": stats.get("train_images"), "val_images": stats.get("val_images"),
               "data_summary": stats}
    if result["final_dir"] is not None:
        write_json(run.path / "results.json", results)
    return results


def _check_same_run(run, task, train_cfg) -> None:
    from pipeline.errors import PipelineError

    recorded = run.read_config()
    differs = []
    if recorded.get("task") != task.name:
        differs.append(f"task {recorded.get('task')!r}")
    old_task = recorded.get("task_options") or {}
    differs += [f"task_options.{k}" for k, v in task.describe().items() if _plain(v) != old_task.get(k)]
    old_train = recorded.get("train") or {}
    differs += [f"train.{k}" for k, v in train_cfg.to_dict().items()
                if k not in _RESUME_FREE and _plain(v) != old_train.get(k)]
    if differs:
        raise PipelineError(f"--resume with options other than the run's ({', '.join(differs[:6])}); pass the "
                            f"options it was started with, or choose another --out", run.path / "config.yaml")


def _plain(value: Any) -> Any:
    """What the value reads back as from YAML (tuples -> lists), for comparisons and records."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    import distributed  # noqa: F401 - configures its loggers on import; quiet them after

    if not getattr(args, "debug", False):
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)
    results = train_detector(
        args.data, args.out, preset=args.preset, config=args.config, init=args.init, val_fraction=args.val_fraction,
        workers=args.workers, scheduler=args.scheduler, resume=args.resume,
        steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        seed=args.seed, precision=args.precision, val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        num_workers=args.loader_workers, device=args.device, progress=False if args.no_progress else None)
    val = results["validation"] or {}
    print(f"train-detector: step {results['step']}/{results['total_steps']}, box AP {val.get('AP', float('nan')):.3f}, "
          f"AP50 {val.get('AP50', float('nan')):.3f} on {results['val_images']} held-out images; "
          f"weights in {results['final']} (lxmert-pipeline extract --weights {results['final']})", file=sys.stderr)
    return 0
