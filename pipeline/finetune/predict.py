"""A fine-tuned run's answers for a split: the plug-in `evaluate --run` calls
(`pipeline/evaluation/run_predictions.py` holds the contract).

The model is the run's best/ (best validation accuracy, as the reference tests BEST.pth)
when it has one, else final/; tokenizer and answer vocabulary come from that directory, the
features from the store recorded in RUN/config.yaml (or `features=`), and a language-only
run blanks the images here too. The questions are the split's files as they ship (all of
them: VQA's questions file, GQA's all-questions file when there is one, NLVR2's jsonl).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

CHECKPOINT_CHOICES = ("best", "final")


PRECISIONS = ("fp32", "bf16")


def run_record(run: str | os.PathLike) -> dict[str, Any]:
    """RUN/config.yaml of a fine-tuning run; one clear error for anything else."""
    from pipeline.training import RunDir

    run_dir = RunDir(run)
    if not run_dir.path.is_dir():
        raise PipelineError("no such run directory", run)
    if not run_dir.has_run():
        raise PipelineError("not a training run (no config.yaml)", run)
    record = run_dir.read_config() or {}
    options = record.get("task_options")
    if record.get("stage") != "finetune" or not isinstance(options, dict) or "task" not in options:
        raise PipelineError(f"not a fine-tuning run (its config.yaml describes a {record.get('task', 'unknown')!r} "
                            "run); evaluate takes runs of `lxmert-pipeline finetune`", run_dir.path / "config.yaml")
    return record


def run_task(run: str | os.PathLike) -> str:
    """The task a run was fine-tuned for (read before predicting anything)."""
    return run_record(run)["task_options"]["task"]


def model_dir(run: str | os.PathLike, checkpoint: str | None = None) -> Path:
    """best/ when present (else final/), or the one asked for."""
    run = Path(run)
    if checkpoint is not None and checkpoint not in CHECKPOINT_CHOICES:
        raise PipelineError(f"checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)}, not {checkpoint!r}")
    for name in ([checkpoint] if checkpoint else CHECKPOINT_CHOICES):
        if (run / name / "config.json").is_file():
            return run / name
    wanted = f"{checkpoint}/" if checkpoint else "best/ or final/"
    raise PipelineError(f"the run has no {wanted} model (not finished? rerun finetune with --resume)", run)


@dataclass
class FinetunedRun:
    """A fine-tuned run's model, tokenizer and task, loaded once."""
    task: Any                   # the run's FinetuneTask (store: the run's feature store path)
    model: Any                  # LxmertForQuestionAnswering / LxmertForNLVR2, eval mode
    tokenizer: Any
    directory: Path             # the model directory used (best/ or final/)
    store_path: Path            # the feature store recorded in the run (or given)

    @property
    def name(self) -> str:
        return self.task.name


def load_finetuned(run: str | os.PathLike, *, features: str | os.PathLike | None = None,
                   checkpoint: str | None = None) -> FinetunedRun:
    """The run's best/ (else final/) model with its tokenizer and answers; `features` replaces
    the store the run recorded (it must fit the model)."""
    from model import load_pretrained
    from model.errors import CheckpointError
    from pipeline.finetune.init import DIRECTORY, ModelInit
    from pipeline.finetune.tasks import TASKS
    from pipeline.inputs.text import load_run_tokenizer

    record = run_record(run)
    options = record["task_options"]
    name = options["task"]
    directory = model_dir(run, checkpoint)
    try:
        model = load_pretrained(directory)
    except CheckpointError as err:
        raise PipelineError(str(err)) from None
    cls = TASKS[name]
    if not isinstance(model, cls.model_class):
        raise PipelineError(f"holds a {type(model).__name__}, not the {cls.model_class.__name__} of {name}", directory)
    store_path = Path(features or options["features"])
    task = cls(store=str(store_path), data=str(options.get("data", "")), tokenizer_dir=str(directory),
               init=ModelInit(DIRECTORY, str(directory)), answers=model.config.answers,
               loss_kind=options.get("loss", cls.losses[0]), language_only=bool(options.get("language_only")))
    return FinetunedRun(task=task, model=model.eval(), tokenizer=load_run_tokenizer(directory), directory=directory,
                        store_path=store_path)


def predict(run: str | os.PathLike, data: str | os.PathLike, split: str, *, features: str | os.PathLike | None = None,
            checkpoint: str | None = None, batch_size: int = 256,
            device: str | None = None, precision: str = "fp32") -> tuple[str, dict[Hashable, str]]:
    """(task, {question id -> answer}) for every question of `split` under the data root `data`.

    `precision` "bf16": the Linear weights are cast to bf16 once and the forward runs under bf16
    autocast (~2x the fp32 rate on CPUs with bf16 matrix instructions and on GPUs); a few
    answers whose top two scores are within bf16 rounding may differ from fp32's.
    """
    import torch

    if precision not in PRECISIONS:
        raise PipelineError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")

    from pipeline.features import FeatureStore
    from pipeline.finetune.splits import missing_images
    from pipeline.inputs import check_store_fits

    loaded = load_finetuned(run, features=features, checkpoint=checkpoint)
    task, model, name = loaded.task, loaded.model, loaded.name
    store = FeatureStore(loaded.store_path)
    check_store_fits(model.config, store.metadata, loaded.store_path, labels=False)
    examples = type(task).read_split(str(data), split, prediction=True)
    if not task.language_only:
        missing = missing_images(store, examples)
        if missing:
            raise PipelineError(f"{len(missing)} images of {name} split {split!r} are not in the feature store "
                                f"(first: {', '.join(missing[:3])}); extract them, or pass the store that has them",
                                loaded.store_path)
    source = task.batches(examples, loaded.tokenizer, labelled=False)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target)
    autocast_dtype = None
    if precision == "bf16":
        model.cast_linear_weights(torch.bfloat16)
        autocast_dtype = torch.bfloat16
    log.info("predicting %d %s %s examples with %s%s (%s)", len(examples), name, split, loaded.directory,
             " (language only)" if task.language_only else "", precision)
    answers = task.predictions(model, source, batch_size, target, autocast_dtype)
    return name, {type(task).example_id(e): a for e, a in zip(examples, answers)}
