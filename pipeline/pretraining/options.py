"""`PretrainOptions`: the pretraining task's own settings (the loop's are `TrainConfig`).

Defaults are the reference behaviour (docs/reference/lxmert.md §1.5-1.6, quirks §1.10); each quirk
has a documented alternative:

- `visual_label_loss_scope`: "all" = obj/attr CE on every object weighted by the detector's
  confidence (the reference, Q2); "masked" = only on the objects whose feature was masked.
- `visual_loss_normalizer`: every visual loss is a mean over all B*N objects times this
  (the reference's 1/0.15); 1.0 gives the plain mean.
- `qa_from_epoch`: epochs trained without the QA loss first (0 = this code's single stage;
  the paper's schedule is 10 epochs without QA, then 10 with: `qa_from_epoch=10`).
- `qa_weight`: the QA loss's weight in the total (the EMNLP code used 2 in its second stage).
- `grounding_warmup_epochs`: epochs at the start in which every row's sentence is about its
  own image's detections: "is there a LABEL?" for the QA head or "there is a LABEL ." for the
  matching head, true when the store has the label with confidence >= `grounding_min_conf`;
  the other tasks run as usual. 0 (the reference) = none. A departure from the reference that
  gets a from-scratch model off the grounding saddle (pipeline/pretraining/grounding.py).
- `grounding_rate`: after the warm-up, the share of each batch's rows that still get such a
  sentence (0, the reference, = none): without it the reference tasks unlearn the grounding.
- `sentence_words_weight`: weight of an extra loss, "words": the MLM head at the [CLS]
  position predicts the sentence's bag of words (every token but [CLS]/[SEP]/[PAD], masked
  ones as they were before masking). 0 (the reference) = off. A departure from the reference
  that gets a from-scratch model off the saddle on which matching and presence questions sit.

The grounding options and `sentence_words_weight` are off by default and documented in
docs/pretraining.md (what they do, why, and what they bring at small scale). All options are
recorded in RUN/config.yaml under `task_options.options` and read back from a `--config`
file's `task:` section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from model.configuration_lxmert import REFERENCE_VISUAL_LOSS_NORMALIZER, VISUAL_LABEL_LOSS_SCOPES
from pipeline.training.config import require_known_fields

# the pretraining losses, named as the model's `loss_per_task`
TASKS = ("mlm", "matched", "obj", "attr", "feat", "qa")
# LXMERT json source names (mscoco/vg captions; vqa/gqa/visual7w QA) plus this project's
# name for Visual Genome QA read from question_answers.json
SOURCES = ("mscoco", "vg", "vqa", "gqa", "vgqa", "visual7w")


@dataclass
class PretrainOptions:
    sources: list[str] | None = None      # sentence sources used; None = every source found
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    word_mask_rate: float = 0.15
    obj_mask_rate: float = 0.15
    mismatch_rate: float = 0.5
    visual_label_loss_scope: str = "all"
    visual_loss_normalizer: float = REFERENCE_VISUAL_LOSS_NORMALIZER
    qa_from_epoch: int = 0
    qa_weight: float = 1.0
    grounding_warmup_epochs: int = 0
    grounding_min_conf: float = 0.5
    grounding_rate: float = 0.0
    sentence_words_weight: float = 0.0
    max_answers: int = 9500               # the pretraining answer table keeps the most frequent answers
    val_max_images: int | None = 5000     # the reference validates on 5000 images of minival
    model: dict[str, Any] = field(default_factory=dict)   # LxmertConfig overrides of the preset

    def __post_init__(self) -> None:
        if self.sources is not None:
            self.sources = list(self.sources)
            if not self.sources:
                raise ValueError("sources: give at least one sentence source")
        self.tasks = list(self.tasks)
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {list(TASKS)}, got {self.tasks}")
        for name in ("word_mask_rate", "obj_mask_rate", "mismatch_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.visual_label_loss_scope not in VISUAL_LABEL_LOSS_SCOPES:
            raise ValueError(f"visual_label_loss_scope must be one of {VISUAL_LABEL_LOSS_SCOPES}, "
                             f"got {self.visual_label_loss_scope!r}")
        if self.visual_loss_normalizer <= 0:
            raise ValueError(f"visual_loss_normalizer must be positive, got {self.visual_loss_normalizer}")
        if self.qa_from_epoch < 0 or self.qa_weight < 0:
            raise ValueError("qa_from_epoch and qa_weight must not be negative")
        if self.grounding_warmup_epochs < 0 or not 0.0 <= self.grounding_min_conf <= 1.0:
            raise ValueError("grounding_warmup_epochs must not be negative and grounding_min_conf must be in [0, 1]")
        if not 0.0 <= self.grounding_rate <= 1.0:
            raise ValueError(f"grounding_rate must be in [0, 1], got {self.grounding_rate}")
        if self.uses_grounding and "qa" not in self.tasks:
            raise ValueError("the grounding sentences ask questions: grounding needs the qa task")
        if self.sentence_words_weight < 0:
            raise ValueError(f"sentence_words_weight must not be negative, got {self.sentence_words_weight}")
        if self.max_answers < 1:
            raise ValueError(f"max_answers must be at least 1, got {self.max_answers}")
        if self.visual_label_loss_scope == "masked" and "feat" not in self.tasks:
            raise ValueError("visual_label_loss_scope 'masked' needs the feat task (its mask)")

    @property
    def uses_grounding(self) -> bool:
        return bool(self.grounding_warmup_epochs or self.grounding_rate)

    def model_flags(self) -> dict[str, Any]:
        """The `LxmertConfig` fields these options decide."""
        visual = [t for t in ("obj", "attr", "feat") if t in self.tasks]
        return dict(task_mask_lm="mlm" in self.tasks, task_matched="matched" in self.tasks,
                    task_obj_predict=bool(visual), task_qa="qa" in self.tasks,
                    visual_obj_loss="obj" in self.tasks, visual_attr_loss="attr" in self.tasks,
                    visual_feat_loss="feat" in self.tasks,
                    visual_label_loss_scope=self.visual_label_loss_scope,
                    visual_loss_normalizer=self.visual_loss_normalizer)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainOptions":
        require_known_fields(cls, values, "pretraining")
        return cls(**values)

    def replace(self, **changes: Any) -> "PretrainOptions":
        return dataclasses.replace(self, **changes)
