"""The training stages as functions with explicit arguments, shared by their commands
(`pretrain`, `finetune`) and by `lxmert-pipeline run`'s graph.

Each prepares its task (every input check happens here, before a worker is busy), settles
the loop settings (the task's recipe, or a resumed run's recorded settings, then the
caller's layers), and trains on Dask: on a cluster started for the call, on `scheduler`,
or through `client` (a stage inside a larger graph). `ranks=1` trains in the calling
process instead, which is how the run graph runs several fine-tunings side by side, one per
worker.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from pipeline.training import RunDir


def _train(task, config, out, *, resume: bool, extra: dict[str, Any] | None, workers: int | None,
           scheduler: str | None, client, in_process: bool) -> dict[str, Any]:
    from workflows.train import prepare_run, run_training, train_rank

    if in_process:
        prepare_run(RunDir(out), task, config, resume=resume, extra=extra)
        return train_rank(task, config, str(out), 0, 1, 0, None, resume)
    return run_training(task, config, out, workers=workers, scheduler=scheduler, resume=resume,
                        extra_config=extra, client=client)


def _defaults(out, resume: bool, recipe: dict[str, Any]) -> dict[str, Any]:
    """A resumed run keeps its recorded loop settings (layers given now still win)."""
    run = RunDir(out)
    if resume and run.has_run():
        return dict(run.read_config().get("train") or recipe)
    return recipe


def finetune_stage(options, out: str | os.PathLike, *, train_layers: Sequence[dict[str, Any]] = (),
                   resume: bool = False, workers: int | None = None, scheduler: str | None = None, client=None,
                   in_process: bool = False) -> dict[str, Any]:
    """Fine-tune per `options` (`FinetuneOptions`) into `out`. Returns the loop's result with
    `init` (where the weights came from, answers matched) and `best` (best validation)."""
    from pipeline.finetune.stage import STAGE_RECORD, default_recipe, prepare_finetune
    from workflows.commands.training_options import merged_train_config

    task = prepare_finetune(options, out, resume=resume)
    config = merged_train_config(_defaults(out, resume, default_recipe(task)), *train_layers)
    result = _train(task, config, out, resume=resume, extra=STAGE_RECORD, workers=workers, scheduler=scheduler,
                    client=client, in_process=in_process)
    return {**result, "init": task.record["init"], "best": RunDir(out).best_record()}


def pretrain_stage(features: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
                   preset: str = "base", options=None, vocab: str | os.PathLike | None = None,
                   answers: str | os.PathLike | None = None, train_layers: Sequence[dict[str, Any]] = (),
                   resume: bool = False, workers: int | None = None, scheduler: str | None = None,
                   client=None) -> dict[str, Any]:
    """Pretrain on the store `features` and data root `data` into `out`. `options`: a
    `PretrainOptions` or its dict (ignored on resume: the run's recorded task is rebuilt).
    Returns the loop's result with `summary` (examples per split, images missing from the store)
    and `tasks` (the pretraining tasks trained)."""
    from pipeline.errors import UsageError
    from pipeline.pretraining.options import PretrainOptions
    from pipeline.pretraining.recipe import recipe
    from pipeline.pretraining.stage import model_preset_names, open_run, prepare_pretraining, recorded_train_config
    from workflows.commands.training_options import merged_train_config

    run = open_run(out, resume)
    if resume and run.has_run():
        defaults, options = recorded_train_config(run), None
    else:
        if preset not in model_preset_names():
            raise UsageError(f"unknown model preset {preset!r}; choose from {', '.join(model_preset_names())}")
        device = next((layer["device"] for layer in reversed(train_layers) if layer.get("device")), "cpu")
        defaults = recipe(preset, device)
        if not isinstance(options, PretrainOptions):
            try:
                options = PretrainOptions.from_dict(dict(options or {}))
            except (TypeError, ValueError) as err:
                raise UsageError(f"pretraining options: {err}") from None
    config = merged_train_config(defaults, *train_layers)
    task, summary = prepare_pretraining(features, data, out, preset=preset, options=options, vocab=vocab,
                                        answers=answers, resume=resume)
    result = _train(task, config, out, resume=resume, extra={"data_summary": summary} if summary else None,
                    workers=workers, scheduler=scheduler, client=client, in_process=False)
    return {**result, "summary": summary, "tasks": list(task.options.tasks)}
