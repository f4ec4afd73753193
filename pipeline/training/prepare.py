"""Starting a run directory: check it, and write config.yaml (everything needed to reproduce
the run). Every training stage calls it through pipeline/stages/training.py."""

from __future__ import annotations

from typing import Any

from pipeline.errors import PipelineError
from pipeline.training.config import TrainConfig
from pipeline.training.run_dir import RunDir
from pipeline.training.job import TrainingJob


def prepare_run(run: RunDir, task: TrainingJob, config: TrainConfig, *, resume: bool,
                extra: dict[str, Any] | None = None) -> None:
    """Check the output directory and write config.yaml (everything needed to reproduce the run)."""
    import platform

    import torch

    import pipeline

    run.check_writable()
    if run.has_run() and not resume:
        raise PipelineError("already holds a training run (config.yaml); pass --resume to continue it "
                            "or choose another --out", run.path)
    run.remove_stale()
    record = {"task": task.name, "task_options": task.describe(), "train": config.to_dict(),
              **(extra or {}),
              "versions": {"lxmert_pipeline": pipeline.__version__, "torch": str(torch.__version__),
                           "python": platform.python_version()}}
    if not (resume and run.has_run()):
        run.write_config(record)
