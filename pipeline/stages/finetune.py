"""The fine-tuning stage: options -> a prepared `FinetuneTask` -> the one training loop,
through an executor (default: this process).

`prepare_finetune` does everything that can fail on bad input before any training starts:
reads the splits, checks that the feature store has every image and fits the model,
settles the answer vocabulary (saved as RUN/answers.json) and the tokenizer (RUN/tokenizer/),
and loads the initial weights once to report how many answer rows matched by name.
`finetune` then trains the task where the executor says (one process, or DDP over Dask
workers with `workflows.executors.DaskExecutor`).

Run directory (the training loop's layout, plus):

    RUN/config.yaml        task, init (+ answers matched), model size, features, data, splits,
                           answers file; the loop settings (recipe.py, then the user's)
    RUN/answers.json       the answer vocabulary in head order (VQA/GQA)
    RUN/tokenizer/         vocab.txt + tokenizer.json
    RUN/metrics.jsonl      training lines; validation lines (split "val": accuracy, loss)
    RUN/checkpoints/step-N/, RUN/final/   the last model (the reference's LAST.pth)
    RUN/best/              the model of the best validation accuracy (BEST.pth) + best.json

Every model directory holds config.json (answers as id2label), model.safetensors and the
tokenizer: `transformers.LxmertForQuestionAnswering.from_pretrained(RUN/best)` loads it.
`predict` (and `evaluate --run`) uses best/ when the run validated, else final/.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.errors import PipelineError, UsageError
from pipeline.finetune.init import CHECKPOINT, SCRATCH, resolve_init
from pipeline.finetune.recipe import recipe
from pipeline.finetune.splits import missing_images, require_labels
from pipeline.finetune.tasks import TASKS, FinetuneTask
from pipeline.readers.answers import AnswerVocab
from pipeline.stages.executor import InProcess
from pipeline.stages.training import loop_settings, open_run, train_run
from pipeline.training import RunDir
from pipeline.training.config import require_known_fields

log = logging.getLogger(__name__)

ANSWERS_FILE = "answers.json"
# marks a run directory as a fine-tuning run in its config.yaml (predict checks it)
FINETUNE_RECORD = {"stage": "finetune"}


@dataclass
class FinetuneOptions:
    """Everything a user chooses about a fine-tuning run except the loop settings (`TrainConfig`)."""
    task: str                                # vqa | gqa | nlvr2
    features: str                            # feature store directory
    data: str                                # data root
    init: str | None = None                  # pretraining run, transformers dir, original .pth; None = scratch
    preset: str | None = None                # scratch: the network (default "base"); original .pth: its head count
    vocab: str | None = None                 # tokenizer when init has none (or to learn none from scratch)
    train_splits: list[str] | None = None    # None: the task's reference splits
    valid_split: str | None = None           # None: the task's reference split; "none": no validation
    answers: str | None = None               # answer vocabulary file; None: the reference rule on the data
    init_answers: str | None = None          # an original checkpoint's answer names (LXMERT's all_ans.json)
    answer_min_count: int = 9                # VQA rule: answers of at least this many questions
    loss: str | None = None                  # bce | ce; None: the task's reference loss
    language_only: bool = False              # blank every image (the text-only baseline)
    model: dict[str, Any] = dataclasses.field(default_factory=dict)   # scratch: overrides of the preset's sizes

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FinetuneOptions":
        try:
            require_known_fields(cls, values, "fine-tuning")
        except ValueError as err:
            raise UsageError(str(err)) from None
        try:
            return cls(**values)
        except TypeError as err:
            raise UsageError(f"fine-tuning options: {err}") from None


def task_class(name: str) -> type[FinetuneTask]:
    if name not in TASKS:
        raise UsageError(f"unknown fine-tuning task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def _read(cls: type[FinetuneTask], data: str, splits: list[str]) -> list:
    out: list = []
    for split in splits:
        examples = cls.read_split(data, split)
        require_labels(examples, cls.name, split, data)
        out.extend(examples)
    return out


def _answers(cls, options: FinetuneOptions, run: RunDir, train_examples, valid_examples) -> list[str] | None:
    saved = run.path / ANSWERS_FILE
    if saved.is_file():            # a resumed run keeps its vocabulary, whatever the data says now
        return AnswerVocab.load(saved).answers
    if options.answers:
        vocab = AnswerVocab.load(options.answers)
    else:
        vocab = cls.answer_vocabulary(train_examples, valid_examples, options.answer_min_count)
    if vocab is None:
        return None
    if not len(vocab):
        raise PipelineError(f"the {cls.name} answer vocabulary is empty (answer_min_count "
                            f"{options.answer_min_count} too high for this data?)", options.answers or options.data)
    vocab.save(saved)
    return vocab.answers


def _tokenizer(options: FinetuneOptions, init, run: RunDir, train_examples):
    from pipeline.inputs import run_tokenizer

    if init.kind == SCRATCH:
        return run_tokenizer(run.path, vocab=options.vocab, corpus=lambda: [e.sentence for e in train_examples])
    if init.kind == CHECKPOINT and options.vocab is None and not (run.path / "tokenizer").is_dir():
        raise PipelineError("an original checkpoint carries no vocabulary: pass --vocab (e.g. bert-base-uncased's "
                            "vocab.txt)", init.source)
    return run_tokenizer(run.path, vocab=options.vocab or init.source)


# above this share of cut training sentences the run warns: the words that decide an answer
# are often the last ones ("... contains exactly two squares.")
TRUNCATION_WARNING_SHARE = 0.05


def _report_truncation(task: str, tokenizer, train_examples) -> int:
    """How many training sentences lose their last WordPieces to max_seq_length; a warning
    when that is a notable share (a vocabulary that splits the task's words into letters)."""
    count = tokenizer.count_truncated([e.sentence for e in train_examples])
    share = count / max(len(train_examples), 1)
    if share > TRUNCATION_WARNING_SHARE:
        log.warning("%s: %d of the %d training sentences (%.0f%%) have more than the %d WordPieces a sentence "
                    "keeps with the vocabulary %s; their ends are cut off. A vocabulary that splits the task's "
                    "words into pieces does this: use one learnt on text with the task's sentences (pretrain "
                    "learns it so) or bert-base-uncased's", task, count, len(train_examples), 100 * share,
                    tokenizer.max_seq_length - 2, tokenizer.source)
    elif count:
        log.info("%s: %d of the %d training sentences are cut to %d WordPieces", task, count, len(train_examples),
                 tokenizer.max_seq_length - 2)
    return count


def prepare_finetune(options: FinetuneOptions, run_path: str | os.PathLike, *, resume: bool = False) -> FinetuneTask:
    """Check the inputs, write RUN/answers.json and RUN/tokenizer/, and return the task."""
    from model import LxmertConfig
    from pipeline.features import FeatureStore
    from pipeline.inputs import check_store_fits, config_for_store

    cls = task_class(options.task)
    loss = options.loss or cls.losses[0]
    if loss not in cls.losses:
        raise UsageError(f"{cls.name} fine-tunes with {' or '.join(cls.losses)}, not {loss!r}")
    run = open_run(run_path, resume)
    store = FeatureStore(options.features)

    train_splits = list(options.train_splits or cls.default_train_splits)
    valid_split = cls.default_valid_split if options.valid_split is None else options.valid_split
    if str(valid_split).lower() in ("", "none"):
        valid_split = None
    train_examples = _read(cls, options.data, train_splits)
    valid_examples = _read(cls, options.data, [valid_split]) if valid_split else []
    missing = missing_images(store, [*train_examples, *valid_examples])
    if missing:
        raise PipelineError(f"{len(missing)} images of the {cls.name} splits {', '.join(train_splits)}"
                            f"{', ' + valid_split if valid_split else ''} are not in the feature store "
                            f"(first: {', '.join(missing[:3])})", options.features)
    answers = _answers(cls, options, run, train_examples, valid_examples)

    heads = None
    if options.preset is not None:
        if options.preset not in LxmertConfig.PRESETS:
            raise UsageError(f"unknown model preset {options.preset!r}; choose from {', '.join(LxmertConfig.PRESETS)}")
        heads = LxmertConfig.preset(options.preset).num_attention_heads
    init_answers = AnswerVocab.load(options.init_answers).answers if options.init_answers else None
    init = resolve_init(options.init, init_answers=init_answers, num_attention_heads=heads)
    if options.preset is not None and init.kind not in (SCRATCH, CHECKPOINT):
        raise UsageError("--preset chooses the network of a run from scratch (--init none) or the head count of an "
                         "original checkpoint file; a run or a model directory brings its own")
    if options.model and init.kind != SCRATCH:
        raise UsageError("`model:` overrides size a network trained from scratch (--init none); "
                         "a pretrained one keeps its shape")
    tokenizer = _tokenizer(options, init, run, train_examples)
    truncated = _report_truncation(cls.name, tokenizer, train_examples)

    report = None
    if init.kind == SCRATCH:
        qa = {} if answers is None else {"num_qa_labels": len(answers), "answers": answers}
        sizes = {k: v for k, v in options.model.items() if k not in ("vocab_size", "num_qa_labels", "answers")}
        config = config_for_store(store.metadata, options.preset or "base", vocab_size=tokenizer.vocab_size,
                                  **{**sizes, **qa})
        check_store_fits(config, store.metadata, options.features, labels=False)
        init = dataclasses.replace(init, model_config=config.to_dict())
    else:
        model, report = init.build(cls.model_class, answers)
        config = model.config
        del model
        check_store_fits(config, store.metadata, options.features, labels=False)
        if tokenizer.vocab_size > config.vocab_size:
            raise PipelineError(f"the tokenizer has {tokenizer.vocab_size} WordPieces but the model's embedding "
                                f"only {config.vocab_size} rows: use the vocabulary the model was trained with",
                                tokenizer.source)
        log.info("%s init from %s: %s", cls.name, init.source, report.summary())

    record = {"init": init.describe(report),
              "model": {"hidden_size": config.hidden_size, "layers": [config.l_layers, config.x_layers, config.r_layers],
                        "vocab_size": config.vocab_size},
              "train_examples": len(train_examples),
              "truncated_train_sentences": truncated,
              "valid_examples": len(valid_examples),
              "answers_file": str(run.path.resolve() / ANSWERS_FILE) if answers is not None else None,
              "answer_min_count": options.answer_min_count if answers is not None and not options.answers else None}
    log.info("%s: %d training examples (%s), %d validation (%s)%s", cls.name, len(train_examples),
             ", ".join(train_splits), len(valid_examples), valid_split or "none",
             f", {len(answers)} answers" if answers is not None else "")
    return cls(store=str(Path(options.features).resolve()), data=str(Path(options.data).resolve()),
               tokenizer_dir=str((run.path / "tokenizer").resolve()), init=init, train_splits=train_splits,
               valid_split=valid_split, answers=answers, loss_kind=loss, language_only=options.language_only,
               record=record)


def default_recipe(task: FinetuneTask) -> dict[str, Any]:
    """The loop settings `task` starts from: the reference recipe for a paper-width network,
    the small-network recipe otherwise (recipe.py)."""
    return recipe(task.name, task.record["model"]["hidden_size"])


def finetune(options: FinetuneOptions, out: str | os.PathLike, executor=None, *,
             layers: Sequence[dict[str, Any]] = (), resume: bool = False,
             stop_after: int | None = None) -> dict[str, Any]:
    """Fine-tune per `options` into the run directory `out`. `layers`: loop settings over the
    task's recipe (training.py). Returns the loop's result with `init` (where the weights came
    from, answers matched) and `best` (the best validation)."""
    task = prepare_finetune(options, out, resume=resume)
    config = loop_settings(RunDir(out), resume, default_recipe(task), layers)
    result = train_run(task, config, out, executor or InProcess(), resume=resume, record=FINETUNE_RECORD,
                       stop_after=stop_after, inputs=[task.store, task.data, task.tokenizer_dir])
    return {**result, "init": task.record["init"], "best": RunDir(out).best_record()}
