"""The evaluation stage: a fine-tuned run's predictions (or a predictions file) scored with
the official metric of VQA, GQA or NLVR2; results.json and the submission file in `out`."""

from __future__ import annotations

import os

from pipeline.errors import UsageError


def evaluate(task: str, data: str | os.PathLike, split: str, *, run: str | os.PathLike | None = None,
             predictions: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
             strict: bool = False, vqa_version: str = "2021", **predict_options):
    """Score `run` (predicting `split` with its best model) or a `predictions` file.
    `out` defaults to the run. -> (Evaluation, results path, submission path)."""
    from pipeline.evaluation.evaluate import evaluate_predictions, read_predictions, write_evaluation
    from pipeline.evaluation.run_predictions import evaluate_run
    from pipeline.evaluation.split_files import locate

    if predictions is None:
        return evaluate_run(run, data, split, task, out=out, strict=strict, vqa_version=vqa_version,
                            **predict_options)
    if predict_options:
        raise UsageError("--features, --checkpoint and --precision choose how a --run predicts; "
                         "not with --predictions")
    if not out:
        raise UsageError("--out DIR is required with --predictions")
    locate(data, task, split)  # a wrong split fails before reading anything
    read = read_predictions(task, predictions)
    evaluation = evaluate_predictions(task, read.answers, data, split, strict=strict, vqa_version=vqa_version,
                                      duplicates=read.duplicates, source=str(predictions))
    results_path, submission_path = write_evaluation(evaluation, out)
    return evaluation, results_path, submission_path
