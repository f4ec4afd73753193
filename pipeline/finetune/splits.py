"""A fine-tuning task's split as examples, read from the files as the datasets ship them.

| task  | official files under the data root                         | else LXMERT's preprocessed json |
|-------|------------------------------------------------------------|---------------------------------|
| vqa   | `vqa/v2_OpenEnded_mscoco_{split}_questions.json` (+ `v2_mscoco_{split}_annotations.json`) | `lxmert/vqa/{split}.json` |
| gqa   | `gqa/{split}_balanced_questions.json` (training, validation); for prediction `{split}_all_questions.json` first, the file `evaluate` scores | `lxmert/gqa/{split}.json` |
| nlvr2 | `nlvr2/{split}.json`                                        | `lxmert/nlvr2/{split}.json` |

LXMERT's json exists for splits the official files do not have (VQA `minival`/`nominival`),
so `--train train,nominival --valid minival` reproduces the reference split of VQA.
VQA answers are keyed by the official normalisation with soft scores (0.3 per annotator,
1 from 3 on); GQA's by the exact answer string with score 1, as LXMERT's preprocessing does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.evaluation.split_files import available_splits
from pipeline.readers.data_root import DataRoot
from pipeline.readers.gqa import gqa_file_exists, read_gqa_questions
from pipeline.readers.lxmert_json import read_task_json
from pipeline.readers.nlvr2 import read_nlvr2
from pipeline.readers.records import NLVR2TaskExample, TaskExample
from pipeline.readers.vqa import read_vqa


@dataclass(frozen=True)
class QuestionExample:
    """A VQA or GQA question."""
    question_id: int | str                 # VQA int, GQA str (leading zeros kept)
    image_id: str
    sentence: str
    scores: dict[str, float] = field(default_factory=dict)   # answer -> soft score; empty if unlabelled
    answer: str | None = None              # the one reference answer (VQA multiple-choice, GQA answer)

    @property
    def multiple_choice_answer(self) -> str | None:
        """The name `AnswerVocab.for_vqa` reads."""
        return self.answer


@dataclass(frozen=True)
class PairExample:
    """An NLVR2 statement about an image pair."""
    identifier: str
    sentence: str
    left_image_id: str
    right_image_id: str
    label: int | None = None               # 1 = "True"

    @property
    def image_ids(self) -> tuple[str, str]:
        return self.left_image_id, self.right_image_id


def _root(data: str | os.PathLike) -> DataRoot:
    root = DataRoot(data)
    if not root.exists:
        raise PipelineError("no such data root directory", data)
    return root


def _unknown_split(root: DataRoot, task: str, split: str, expected: list[Path]) -> PipelineError:
    official = available_splits(root.root, task)
    lxmert = sorted(p.stem for p in (root.root / "lxmert" / task).glob("*.json"))
    splits = sorted(set(official) | set(lxmert))
    have = f"available {task} splits: {', '.join(splits)}" if splits else f"no {task} split under {root.root}"
    names = " or ".join(str(p.relative_to(root.root)) for p in expected)
    if split in splits:   # e.g. VQA annotations without their questions file
        return PipelineError(f"{task} split {split!r} lacks the file fine-tuning reads: no {names} (its other "
                             f"files are there)", root.root)
    return PipelineError(f"unknown {task} split {split!r} (no {names}); {have}", root.root)


def _from_lxmert_json(path: Path, task: str, split: str):
    examples = read_task_json(path)
    wanted = NLVR2TaskExample if task == "nlvr2" else TaskExample
    if examples and not isinstance(examples[0], wanted):
        kind = "NLVR2" if isinstance(examples[0], NLVR2TaskExample) else "question"
        raise PipelineError(f"holds {kind} entries, not {task} ones (split {split!r})", path)
    return examples


def read_vqa_split(data: str | os.PathLike, split: str) -> list[QuestionExample]:
    root = _root(data)
    questions = root.vqa_questions(split)
    if questions.is_file():
        annotations = root.vqa_annotations(split)
        records = read_vqa(questions, annotations if annotations.is_file() else None)
        return [QuestionExample(q.question_id, q.image_id, q.question, dict(q.scores), q.multiple_choice_answer)
                for q in records]
    lxmert = root.lxmert(f"vqa/{split}")
    if lxmert.is_file():
        return [QuestionExample(e.question_id, e.image_id, e.sent, dict(e.label or {}), _top_answer(e.label))
                for e in _from_lxmert_json(lxmert, "vqa", split)]
    raise _unknown_split(root, "vqa", split, [questions, lxmert])


def read_gqa_split(data: str | os.PathLike, split: str, *, all_questions: bool = False) -> list[QuestionExample]:
    """The balanced questions; with `all_questions`, the split's all-questions file when it has
    one (prediction: evaluate scores consistency on the entailed, unbalanced questions too)."""
    root = _root(data)
    candidates = ([root.gqa_questions(split, balanced=False)] if all_questions else []) + [root.gqa_questions(split)]
    for path in candidates:
        if gqa_file_exists(path):
            return [QuestionExample(q.question_id, q.image_id, q.question,
                                    {} if q.answer is None else {q.answer: 1.0}, q.answer)
                    for q in read_gqa_questions(path)]
    lxmert = root.lxmert(f"gqa/{split}")
    if lxmert.is_file():
        return [QuestionExample(str(e.question_id), e.image_id, e.sent, dict(e.label or {}), _top_answer(e.label))
                for e in _from_lxmert_json(lxmert, "gqa", split)]
    raise _unknown_split(root, "gqa", split, [candidates[-1], lxmert])


def read_nlvr2_split(data: str | os.PathLike, split: str) -> list[PairExample]:
    root = _root(data)
    path = root.nlvr2(split)
    if path.is_file():
        return [PairExample(e.identifier, e.sentence, e.left_image_id, e.right_image_id,
                            None if e.label is None else int(e.label))
                for e in read_nlvr2(path)]
    lxmert = root.lxmert(f"nlvr2/{split}")
    if lxmert.is_file():
        return [PairExample(e.identifier, e.sent, e.left_image_id, e.right_image_id, e.label)
                for e in _from_lxmert_json(lxmert, "nlvr2", split)]
    raise _unknown_split(root, "nlvr2", split, [path, lxmert])


def _top_answer(label: dict[str, float] | None) -> str | None:
    if not label:
        return None
    return max(label, key=lambda a: (label[a], [-ord(c) for c in a]))


def require_labels(examples: list, task: str, split: str, data: str | os.PathLike) -> None:
    """Training and validation splits need answers (a test split has none)."""
    if not examples:
        raise PipelineError(f"{task} split {split!r} has no examples", data)
    labelled = sum(1 for e in examples if (e.label is not None if isinstance(e, PairExample) else e.scores))
    if labelled == 0:
        raise PipelineError(f"{task} split {split!r} has no answers (a test split?); it cannot be trained "
                            "or validated on", data)


def missing_images(store, examples: list) -> list[str]:
    """Image ids the examples need that the feature store lacks, in first-use order."""
    seen: dict[str, None] = {}
    for e in examples:
        for image_id in (e.image_ids if isinstance(e, PairExample) else (e.image_id,)):
            if image_id not in store:
                seen.setdefault(image_id, None)
    return list(seen)
