"""Predictions from a fine-tuning run: the plug-in point between `finetune` and `evaluate`.

The fine-tuning code provides `pipeline.finetune.predict.predict(run, data, split)`,
returning `(task, answers)`: the task the run was fine-tuned for and a dict id -> answer
(VQA question_id int -> answer, GQA questionId str -> answer, NLVR2 identifier ->
"True"/"False"). Until that module exists, evaluating a run fails with one line that
names what is missing. When the module also has `run_task(run) -> task`, a run of another
task is refused before anything is predicted. Keyword options (e.g. `features=` to read
another feature store) pass through to the predictor.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Hashable

from pipeline.errors import PipelineError

PREDICTOR_MODULE = "pipeline.finetune.predict"
PREDICTOR_NAME = "predict"


def load_predictor() -> Callable:
    try:
        module = importlib.import_module(PREDICTOR_MODULE)
    except ModuleNotFoundError as err:
        if err.name and PREDICTOR_MODULE.startswith(err.name):
            raise PipelineError(f"evaluating a run needs {PREDICTOR_MODULE}.{PREDICTOR_NAME}(run, data, split), "
                                "which this build does not have yet; score a predictions file in the official "
                                "format with --predictions FILE instead") from None
        raise
    predictor = getattr(module, PREDICTOR_NAME, None)
    if not callable(predictor):
        raise PipelineError(f"{PREDICTOR_MODULE} has no function {PREDICTOR_NAME}(run, data, split)")
    return predictor


def predict_run(run: str | os.PathLike, data: str | os.PathLike, split: str, task: str,
                **options) -> dict[Hashable, str]:
    run = Path(run)
    if not run.is_dir():
        raise PipelineError("no such run directory", run)
    predictor = load_predictor()
    declared_task = getattr(importlib.import_module(PREDICTOR_MODULE), "run_task", None)
    if declared_task is not None and declared_task(run) != task:
        raise PipelineError(f"this run was fine-tuned for {declared_task(run)}, not {task}", run)
    run_task, answers = predictor(run, Path(data), split, **options)
    if run_task != task:
        raise PipelineError(f"this run was fine-tuned for {run_task}, not {task}", run)
    return dict(answers)


def evaluate_run(run: str | os.PathLike, data: str | os.PathLike, split: str, task: str, *,
                 out: str | os.PathLike | None = None, strict: bool = False, vqa_version: str = "2021",
                 **options):
    """Predict `split` with a fine-tuned run and score it; results.json and the submission
    file go to `out` (default: the run). -> (Evaluation, results path, submission path)."""
    from pipeline.evaluation.evaluate import evaluate_predictions, write_evaluation
    from pipeline.evaluation.split_files import locate

    locate(data, task, split)  # a wrong split fails before anything is predicted
    answers = predict_run(run, data, split, task, **options)
    evaluation = evaluate_predictions(task, answers, data, split, strict=strict, vqa_version=vqa_version,
                                      source=str(run))
    results_path, submission_path = write_evaluation(evaluation, Path(out or run))
    return evaluation, results_path, submission_path
