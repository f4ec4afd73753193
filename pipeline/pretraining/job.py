"""`PretrainingJob`: LXMERT's five pretraining tasks as a `TrainingJob` of the one training loop.

The task is small and picklable (paths, options, the model config): it is shipped to every
Dask worker, which memory-maps the run's prepared examples and the feature store itself.
Everything it reads was prepared by `stage.prepare_pretraining` inside the run directory:

    RUN/tokenizer/        the run's WordPiece vocabulary
    RUN/answers.json      the pretraining answer table, in QA-head order
    RUN/data/train/, RUN/data/valid/   the examples (examples.py)

Every checkpoint directory (and RUN/final/) is self-contained: `model.safetensors` +
`config.json` (LxmertForPreTraining, `id2label` = the answer table) and the tokenizer files,
so `model.load_pretrained(RUN/final, LxmertForQuestionAnswering, answers=[...])` and
`pipeline.inputs.text.load_run_tokenizer(RUN)` are all a fine-tuning run needs.
"""

from __future__ import annotations

import collections
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from model import LxmertConfig, LxmertForPreTraining, save_pretrained
from model.tokenizer import TOKENIZER_NAME, VOCAB_NAME
from pipeline.inputs.text import TOKENIZER_DIR
from pipeline.pretraining.data import PretrainingData, model_batch
from pipeline.pretraining.examples import is_complete
from pipeline.pretraining.masking import IGNORE
from pipeline.pretraining.options import TASKS, PretrainOptions

ANSWERS = "answers.json"
DATA_DIR = "data"


@dataclass
class PretrainingJob:
    run_path: str
    features: str
    data: str
    preset: str
    model_config: dict[str, Any]          # LxmertConfig.to_dict(), answers included
    special_ids: dict[str, int]           # pad, cls, sep, mask of the run's tokenizer
    options: PretrainOptions = field(default_factory=PretrainOptions)
    name: str = "pretrain"

    @property
    def find_unused_parameters(self) -> bool:
        # a switched-off task leaves its head (e.g. the matching classifier) without gradient
        return set(self.options.tasks) != set(TASKS)

    @property
    def config(self) -> LxmertConfig:
        return LxmertConfig.from_dict(self.model_config)

    # ---- model and data ------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        return LxmertForPreTraining(self.config)

    def _data(self, split: str, answer_scores: bool, options: PretrainOptions) -> PretrainingData:
        return PretrainingData(str(Path(self.run_path) / DATA_DIR / split), self.features, options,
                               vocab_size=self.model_config["vocab_size"], special_ids=self.special_ids,
                               num_answers=self.model_config["num_qa_labels"], answer_scores=answer_scores)

    def train_data(self) -> PretrainingData:
        return self._data("train", False, self.options)

    def val_data(self) -> PretrainingData | None:
        if not is_complete(Path(self.run_path) / DATA_DIR / "valid"):
            return None
        # validation scores the reference's tasks, QA included before `qa_from_epoch` and in the
        # grounding warm-up, so its curves are comparable across the whole run
        options = self.options.replace(qa_from_epoch=0, grounding_warmup_epochs=0, grounding_rate=0.0)
        data = self._data("valid", True, options)
        return data if len(data) else None

    # ---- losses --------------------------------------------------------------------------
    @property
    def _logged_losses(self) -> list[str]:
        return self.options.tasks + (["words"] if self.options.sentence_words_weight else [])

    def _sentence_words(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Each row's tokens before masking, IGNORE at [CLS]/[SEP]/[MASK]/padding: the
        targets of the "words" loss, or None when it is off."""
        if not self.options.sentence_words_weight:
            return None
        words = torch.where(batch["labels"] != IGNORE, batch["labels"], batch["input_ids"])
        special = torch.tensor([self.special_ids[k] for k in ("pad", "cls", "sep", "mask")], device=words.device)
        keep = batch["attention_mask"].bool() & ~torch.isin(words, special)
        return words.masked_fill(~keep, IGNORE)

    def _forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        """The model on `batch`, as the loader made it or already through `model_batch`.

        The object masks are applied here, on the batch's device: the loader ships the float16
        features once, unmasked, with the masks it drew (data.py)."""
        batch = model_batch(batch)
        weights = {}
        if self.options.qa_weight != 1.0:
            weights["qa"] = self.options.qa_weight
        if self.options.sentence_words_weight not in (0.0, 1.0):
            weights["words"] = self.options.sentence_words_weight
        return model(input_ids=batch["input_ids"], visual_feats=batch["visual_feats"],
                     visual_pos=batch["visual_pos"], attention_mask=batch["attention_mask"],
                     visual_attention_mask=batch.get("visual_attention_mask"),
                     token_type_ids=batch["token_type_ids"], labels=batch["labels"],
                     obj_labels={"obj": (batch["obj_ids"], batch["obj_conf"]),
                                 "attr": (batch["attr_ids"], batch["attr_conf"]),
                                 "feat": (batch["feat_targets"], batch["feat_mask"])},
                     matched_label=batch["matched_label"], ans=batch["ans"],
                     sentence_words=self._sentence_words(batch), loss_weights=weights or None)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], epoch: int):
        out = self._forward(model, batch)
        return out.loss, {k: out.loss_per_task[k] for k in self._logged_losses}

    def validate(self, model: torch.nn.Module, batches: Iterable[dict[str, Any]], epoch: int) -> dict[str, float]:
        """Per-task losses (means over rows) and the QA accuracy: the soft score of the
        predicted answer (VQA-style; exact match for GQA-style labels), overall and per source.

        The text-side numbers again with every row shown another image of the batch
        (`mlm_other_image`, `qa_accuracy_other_image`): how much the model uses the picture.
        A model that reads the answer off the sentence alone scores the same on both.
        """
        sources = self._data("valid", True, self.options).table.sources
        sums: dict[str, float] = collections.defaultdict(float)
        # per view of the image ("" = its own, "_other_image"): source -> summed score, count
        scored = {view: collections.defaultdict(float) for view in ("", "_other_image")}
        asked = {view: collections.defaultdict(int) for view in ("", "_other_image")}
        rows = 0
        for batch in batches:
            batch = model_batch(batch)   # the other-image view below shows the masked features
            b = len(batch["ans"])
            rows += b
            out = self._forward(model, batch)
            sums["loss"] += float(out.loss) * b
            for k in self._logged_losses:
                sums[k] += float(out.loss_per_task[k]) * b
            _score_answers(out.qa_logits, batch, sources, scored[""], asked[""])
            shown_other = _other_images(batch)
            if shown_other is not None:
                other = self._forward(model, shown_other)
                if "mlm" in self.options.tasks:
                    sums["mlm_other_image"] += float(other.loss_per_task["mlm"]) * b
                _score_answers(other.qa_logits, batch, sources, scored["_other_image"], asked["_other_image"])
        metrics = {k: v / max(rows, 1) for k, v in sums.items()}
        for view in scored:
            if asked[view]:
                metrics[f"qa_accuracy{view}"] = sum(scored[view].values()) / sum(asked[view].values())
        metrics.update({f"qa_accuracy_{s}": scored[""][s] / asked[""][s] for s in sorted(asked[""])})
        return metrics

    # ---- outputs -------------------------------------------------------------------------
    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        save_pretrained(model, directory)
        tokenizer = Path(self.run_path) / TOKENIZER_DIR
        for name in (VOCAB_NAME, TOKENIZER_NAME):
            if (tokenizer / name).is_file():
                shutil.copyfile(tokenizer / name, Path(directory) / name)

    def describe(self) -> dict[str, Any]:
        model = {k: v for k, v in self.model_config.items() if k != "answers"}
        return {"features": self.features, "data": self.data, "preset": self.preset,
                "options": self.options.to_dict(), "model": model, "answers": ANSWERS,
                "special_ids": dict(self.special_ids)}

    @classmethod
    def from_description(cls, run_path: str, described: dict[str, Any], answers: list[str]) -> "PretrainingJob":
        """The task of an existing run (config.yaml's `task_options`), for --resume."""
        model = dict(described["model"], answers=answers)
        return cls(run_path=str(run_path), features=described["features"], data=described["data"],
                   preset=described["preset"], model_config=model, special_ids=dict(described["special_ids"]),
                   options=PretrainOptions.from_dict(described["options"]))


# the inputs that come with the image; the sentence and its targets stay with the row
_IMAGE_KEYS = ("visual_feats", "visual_pos", "visual_attention_mask", "obj_ids", "obj_conf", "attr_ids",
               "attr_conf", "feat_targets", "feat_mask")


def _other_images(batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch with each row shown the image of the next row (cyclically) that has another
    image; None when the batch holds a single image. Consecutive examples are mostly sentences
    of the same image, so a plain shift would show most rows their own. Images are told apart
    by their boxes, which object masking never changes."""
    _, image = torch.unique(batch["visual_pos"].flatten(1), dim=0, return_inverse=True)
    image = image.tolist()
    if len(set(image)) < 2:
        return None
    n = len(image)
    source = [next((i + d) % n for d in range(1, n) if image[(i + d) % n] != image[i]) for i in range(n)]
    index = torch.tensor(source)
    return {k: v[index] if k in _IMAGE_KEYS else v for k, v in batch.items()}


def _score_answers(qa_logits: torch.Tensor | None, batch: dict[str, Any], sources: list[str],
                   scored: dict[str, float], asked: dict[str, int]) -> None:
    """Add the soft score of each labelled row's predicted answer to its source's sum."""
    if qa_logits is None:
        return
    labelled = batch["ans"] != IGNORE
    # the model ran the QA head on the labelled rows only (CPU) or on all rows
    logits = qa_logits[labelled] if qa_logits.shape[0] == len(batch["ans"]) else qa_logits
    score = batch["answer_scores"][labelled].gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)
    for src, s in zip(batch["source"][labelled].tolist(), score.tolist()):
        scored[sources[src]] += s
        asked[sources[src]] += 1
