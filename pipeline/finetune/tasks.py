"""VQA, GQA and NLVR2 fine-tuning as `TrainingJob`s of the one training loop.

`FinetuneTask` is what the three share: the model starts from a `ModelInit`, batches come
from the feature store and the run's tokenizer, the loss is the model's own (soft-score BCE
x answers for VQA/GQA, cross-entropy for NLVR2), validation is the task's official-style
accuracy (LXMERT's evaluators: VQA soft score of the argmax answer, GQA exact match, NLVR2
accuracy; in percent) and every checkpoint is a self-contained transformers directory with
the tokenizer. The subclasses say only where the tasks differ: which files a split comes
from, the model class, how examples become batches and how outputs become answers (the
loop settings are in recipe.py).

A task object is small and picklable (paths, the answer list, options): it is shipped to
every Dask rank, which reads its data and builds its model itself.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Hashable, Iterable, Iterator, Sequence

import numpy as np
import torch

from model import LxmertForNLVR2, LxmertForQuestionAnswering, save_pretrained
from model.tokenizer import TOKENIZER_NAME, VOCAB_NAME
from pipeline.errors import PipelineError
from pipeline.finetune.data import PairBatches, QuestionBatches
from pipeline.finetune.init import ModelInit
from pipeline.finetune.splits import read_gqa_split, read_nlvr2_split, read_vqa_split
from pipeline.inputs.text import load_run_tokenizer
from pipeline.readers.answers import AnswerVocab

log = logging.getLogger(__name__)

SELECTION_METRIC = "accuracy"


@dataclass
class FinetuneTask:
    store: str                                  # feature store directory
    data: str                                   # data root
    tokenizer_dir: str                          # RUN/tokenizer
    init: ModelInit
    train_splits: list[str] = field(default_factory=list)
    valid_split: str | None = None              # None: no validation (and no best/)
    answers: list[str] | None = None            # VQA/GQA answer vocabulary in head order
    loss_kind: str = "bce"                      # bce | ce
    language_only: bool = False                 # every image blanked (the text-only baseline)
    record: dict[str, Any] = field(default_factory=dict)   # what preparation found, for config.yaml

    name: ClassVar[str]
    # the pooled output reads only the language side: the visual half of the last cross-
    # modality layer gets no gradient in fine-tuning, which DDP must be told about
    find_unused_parameters: ClassVar[bool] = True
    model_class: ClassVar[type]
    losses: ClassVar[tuple[str, ...]]
    default_train_splits: ClassVar[tuple[str, ...]]
    default_valid_split: ClassVar[str]

    # ---- what differs per task -------------------------------------------------------------
    @classmethod
    def read_split(cls, data: str, split: str, *, prediction: bool = False) -> list:
        raise NotImplementedError

    @classmethod
    def answer_vocabulary(cls, train: list, valid: list, min_count: int) -> AnswerVocab | None:
        """The task's answer vocabulary by the reference rule; None when the task has none."""
        return None

    def batches(self, examples: Sequence, tokenizer, *, labelled: bool):
        raise NotImplementedError

    @staticmethod
    def logits(output) -> torch.Tensor:
        raise NotImplementedError

    def answer_strings(self, predicted: torch.Tensor) -> list[str]:
        raise NotImplementedError

    @staticmethod
    def example_id(example) -> Hashable:
        raise NotImplementedError

    # ---- data ------------------------------------------------------------------------------
    def examples(self, splits: Iterable[str]) -> list:
        out: list = []
        for split in splits:
            out.extend(self.read_split(self.data, split))
        return out

    def train_data(self):
        return self.batches(self.examples(self.train_splits), load_run_tokenizer(self.tokenizer_dir), labelled=True)

    def val_data(self):
        if not self.valid_split:
            return None
        return self.batches(self.examples([self.valid_split]), load_run_tokenizer(self.tokenizer_dir),
                            labelled=True)

    # ---- model, loss, validation -------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        model, _ = self.init.build(self.model_class, self.answers)
        return model

    @property
    def loss_scale(self) -> float:
        # the reference multiplies GQA's CE (--mceLoss) by the answer count, like its BCE
        return float(len(self.answers)) if self.loss_kind == "ce" and self.answers else 1.0

    def loss(self, model, batch: dict[str, Any], epoch: int):
        loss = model(**batch).loss * self.loss_scale
        return loss, {}

    def validate(self, model, batches: Iterable[dict[str, Any]], epoch: int) -> dict[str, float]:
        score = loss = 0.0
        count = 0
        for batch in batches:
            labels = batch["labels"]
            output = model(**batch)
            predicted = self.logits(output).argmax(-1)
            if labels.is_floating_point():      # soft scores: the score of the chosen answer
                score += float(labels.gather(1, predicted[:, None]).sum())
            else:
                score += float((predicted == labels).sum())
            loss += float(output.loss) * self.loss_scale * len(labels)
            count += len(labels)
        return {SELECTION_METRIC: 100.0 * score / max(count, 1), "loss": loss / max(count, 1)}

    @torch.no_grad()
    @torch.no_grad()
    def predictions(self, model, source, batch_size: int, device: torch.device,
                    autocast_dtype: torch.dtype | None = None) -> list[str]:
        """Answers for every example of `source` (a `batches(..., labelled=False)`), in order;
        under autocast to `autocast_dtype` when given."""
        out: list[str] = []
        for start in range(0, len(source), batch_size):
            indices = np.arange(start, min(start + batch_size, len(source)))
            batch = {k: v.to(device) for k, v in source.make_batch(indices, np.random.default_rng(0), 0).items()}
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                logits = self.logits(model(**batch))
            out.extend(self.answer_strings(logits.float().argmax(-1).cpu()))
        return out

    # ---- files -----------------------------------------------------------------------------
    def save_model(self, model, directory: Path) -> None:
        """config.json + model.safetensors + the tokenizer: loadable by transformers as it is."""
        save_pretrained(model, directory)
        for name in (VOCAB_NAME, TOKENIZER_NAME):
            source = Path(self.tokenizer_dir) / name
            if source.is_file():
                shutil.copyfile(source, Path(directory) / name)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "features": self.store, "data": self.data, "train_splits": list(self.train_splits),
                "valid_split": self.valid_split, "loss": self.loss_kind, "language_only": self.language_only,
                "tokenizer": self.tokenizer_dir, "answers": None if self.answers is None else len(self.answers),
                **self.record}


class QuestionAnsweringTask(FinetuneTask):
    """VQA and GQA: one image per question, an answer head over the answer vocabulary."""

    model_class = LxmertForQuestionAnswering
    losses = ("bce", "ce")

    def batches(self, examples, tokenizer, *, labelled: bool):
        targets = ("soft" if self.loss_kind == "bce" else "index") if labelled else None
        return QuestionBatches(examples, tokenizer, self.store, answers=self.answers, targets=targets,
                               language_only=self.language_only)

    @staticmethod
    def logits(output) -> torch.Tensor:
        return output.question_answering_score

    def answer_strings(self, predicted: torch.Tensor) -> list[str]:
        return [self.answers[i] for i in predicted.tolist()]

    @staticmethod
    def example_id(example) -> Hashable:
        return example.question_id


@dataclass
class VQATask(QuestionAnsweringTask):
    name = "vqa"
    losses = ("bce",)
    default_train_splits = ("train2014",)
    default_valid_split = "val2014"

    @classmethod
    def read_split(cls, data, split, *, prediction=False):
        return read_vqa_split(data, split)

    @classmethod
    def answer_vocabulary(cls, train, valid, min_count):
        # the reference's 3129: normalised answers of at least 9 questions over train+val
        return AnswerVocab.for_vqa([*train, *valid], min_count=min_count)


@dataclass
class GQATask(QuestionAnsweringTask):
    name = "gqa"
    default_train_splits = ("train", "val")
    default_valid_split = "testdev"

    @classmethod
    def read_split(cls, data, split, *, prediction=False):
        # training and validation use the balanced questions; a prediction covers every
        # question evaluate scores (all_questions: consistency needs the entailed ones)
        return read_gqa_split(data, split, all_questions=prediction)

    @classmethod
    def answer_vocabulary(cls, train, valid, min_count):
        return AnswerVocab.for_gqa(train)


@dataclass
class NLVR2Task(FinetuneTask):
    name = "nlvr2"
    model_class = LxmertForNLVR2
    losses = ("ce",)
    default_train_splits = ("train",)
    default_valid_split = "dev"

    @classmethod
    def read_split(cls, data, split, *, prediction=False):
        return read_nlvr2_split(data, split)

    def batches(self, examples, tokenizer, *, labelled: bool):
        return PairBatches(examples, tokenizer, self.store, labelled=labelled, language_only=self.language_only)

    @staticmethod
    def logits(output) -> torch.Tensor:
        return output.logits

    def answer_strings(self, predicted: torch.Tensor) -> list[str]:
        return ["True" if p == 1 else "False" for p in predicted.tolist()]

    @staticmethod
    def example_id(example) -> Hashable:
        return example.identifier


TASKS: dict[str, type[FinetuneTask]] = {cls.name: cls for cls in (VQATask, GQATask, NLVR2Task)}


def training_sentences(data: str) -> Iterator[str]:
    """The questions and statements of every task's default training splits that `data` has.

    A vocabulary learnt for pretraining must cover them, as BERT's general-English one does
    for the paper: the pretraining corpus alone (captions, QA) may never use NLVR2's words.
    A task or split the data root lacks, or cannot read, is left out (fine-tuning on it
    reports the problem).
    """
    for cls in TASKS.values():
        for split in cls.default_train_splits:
            try:
                examples = cls.read_split(data, split)
            except PipelineError as error:
                log.debug("vocabulary corpus: no %s %s (%s)", cls.name, split, error)
                continue
            yield from (example.sentence for example in examples)
