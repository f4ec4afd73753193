"""The detector-training stage: Visual Genome-format files -> a checkpoint `extract` loads.

The data root holds vg/objects.json, vg/attributes.json, vg/image_data.json,
vg/objects_vocab.txt, vg/attributes_vocab.txt and images/. The run goes through the one
training loop like pretraining and fine-tuning (training.py): RUN/config.yaml,
RUN/metrics.jsonl (losses, and box AP / AP50 on the held-out split at each validation),
RUN/checkpoints/step-*/ and RUN/final/ (each `config.yaml` + `model.safetensors` + the
vocabularies: what `extract --weights` takes), RUN/results.json (the final validation).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from pipeline.stages.executor import InProcess
from pipeline.stages.training import loop_settings, open_run, plain, train_run

log = logging.getLogger(__name__)


def train_detector(data: str | os.PathLike, out: str | os.PathLike, executor=None, *, preset: str = "synth",
                   config: str | os.PathLike | None = None, init: str | os.PathLike | None = None,
                   val_fraction: float = 0.1, layers: Sequence[dict[str, Any]] = (), resume: bool = False,
                   stop_after: int | None = None) -> dict[str, Any]:
    """Train a detector on the data root `data` into the run directory `out`.

    `config`: a YAML file of detector-config sections over the preset; `init`: weights to
    start from; `layers`: loop settings over the preset's schedule. Returns the content of
    RUN/results.json (`final` is the checkpoint folder for `extract --weights`)."""
    from pipeline.detection import make_task, schedule, with_validation_steps

    run = open_run(out, resume)
    task = make_task(data, preset, config_path=config, init=init, val_fraction=val_fraction)
    dataset = task.dataset()          # the annotation errors, before any worker is busy
    train_config = loop_settings(run, resume, schedule(preset), layers)
    train_config = with_validation_steps(train_config, preset, len(dataset.train))
    stats = plain(dataset.stats)
    log.info("train-detector: %d training and %d held-out images, %d object classes, %d attributes",
             len(dataset.train), len(dataset.val), len(dataset.objects), len(dataset.attributes))
    result = train_run(task, train_config, run.path, executor or InProcess(), resume=resume,
                       record={"data_summary": stats}, stop_after=stop_after, inputs=[data])
    return _write_results(run, result, stats)


def _write_results(run, result: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """RUN/results.json: the last validation (the final weights') and where they are."""
    from pipeline.atomic import write_json

    val = [m for m in run.metrics() if m.get("split") == "val"]
    results = {"task": "train-detector", "step": result["step"], "total_steps": result["total_steps"],
               "final": result["final_dir"], "validation": val[-1] if val else None,
               "train_images": stats.get("train_images"), "val_images": stats.get("val_images"),
               "data_summary": stats}
    if result["final_dir"] is not None:
        write_json(Path(run.path) / "results.json", results)
    return results
