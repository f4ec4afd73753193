"""Pretraining examples: every (image, sentence) pair of the chosen sources, as flat arrays.

The driver reads the annotations once, keeps the pairs whose image is in the feature store
(the others are counted and reported, reference behaviour being to train on what has
features), tokenises every sentence and saves the result in the run:

    RUN/data/<split>/images.json        image ids; examples point into it
    RUN/data/<split>/sources.json       sentence source names; examples point into it
    RUN/data/<split>/*.npy              image_index, input_ids (B, 20), source,
                                        label_start / label_answer / label_score (QA labels, CSR)
    RUN/data/<split>/summary.json       counts (written last: its presence marks a complete split)

Every rank and DataLoader worker memory-maps the same .npy files (no Python object per
example, so forked workers share the pages), and a resumed run trains on exactly the
examples it started with.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import PipelineError
from pipeline.pretraining.options import SOURCES
from pipeline.readers.answers import AnswerVocab, convert_ans
from pipeline.readers.records import PretrainEntry

log = logging.getLogger(__name__)

# LXMERT's own preprocessed files (docs/reference/lxmert.md §1.5), used when a data root has them
LXMERT_SPLITS = {"train": ("mscoco_train", "mscoco_nominival", "vgnococo"), "valid": ("mscoco_minival",)}
_ARRAYS = ("image_index", "input_ids", "source", "label_start", "label_answer", "label_score")
SUMMARY = "summary.json"


def read_entries(data_dir: str | os.PathLike, split: str) -> list[PretrainEntry] | None:
    """The `split` ("train" | "valid") entries of a data root; None when it has no such split.

    LXMERT's preprocessed `lxmert/mscoco_train.json`-style files win when present; otherwise
    the entries are built from the datasets' own files (COCO captions, VQA, VG, GQA).
    """
    from pipeline.readers import DataRoot
    from pipeline.readers.lxmert_json import read_pretrain_json
    from pipeline.readers.pretraining import pretrain_entries

    root = DataRoot(data_dir)
    if not root.exists:
        raise PipelineError("no such data directory", data_dir)
    lxmert_files = [root.lxmert(name) for name in LXMERT_SPLITS[split]]
    if any(root.lxmert(name).is_file() for names in LXMERT_SPLITS.values() for name in names):
        found = [p for p in lxmert_files if p.is_file()]
        if not found:
            return None
        log.info("%s split: LXMERT json %s", split, ", ".join(p.name for p in found))
        return [e for p in found for e in read_pretrain_json(p)]
    if split == "valid" and not root.coco_captions("val2014").is_file():
        return None
    return pretrain_entries(root, split)


@dataclass
class ExampleCounts:
    """What became of the annotations: reported by the CLI and kept in config.yaml."""
    examples: int = 0
    images: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    qa_examples: int = 0
    # annotations of images the feature store lacks: skipped, not an error
    missing_images: int = 0
    missing_sentences: int = 0
    # QA sentences whose answers are all outside the answer table: trained without a QA target
    qa_without_answer: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class ExampleTable:
    """The flat arrays of one split (see the module docstring)."""

    def __init__(self, image_ids: list[str], sources: list[str], image_index: np.ndarray, input_ids: np.ndarray,
                 source: np.ndarray, label_start: np.ndarray, label_answer: np.ndarray, label_score: np.ndarray):
        self.image_ids, self.sources = image_ids, sources
        self.image_index, self.input_ids, self.source = image_index, input_ids, source
        self.label_start, self.label_answer, self.label_score = label_start, label_answer, label_score

    def __len__(self) -> int:
        return len(self.image_index)

    def labels(self, rows: Iterable[int]) -> list[dict[int, float] | None]:
        """answer id -> soft score for each row (None when the sentence is not a question)."""
        rows = np.asarray(rows, np.int64)
        # the row bounds in two reads, and plain views of the memory maps (np.memmap's own
        # indexing is Python code: it was a tenth of a batch's CPU when called per row)
        starts, ends = self.label_start[rows].tolist(), self.label_start[rows + 1].tolist()
        answers, scores = np.asarray(self.label_answer), np.asarray(self.label_score)
        return [dict(zip(answers[a:b].tolist(), scores[a:b].tolist())) if b > a else None
                for a, b in zip(starts, ends)]

    def save(self, directory: str | os.PathLike, counts: ExampleCounts) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SUMMARY).unlink(missing_ok=True)
        write_json(directory / "images.json", self.image_ids, indent=None)
        write_json(directory / "sources.json", self.sources, indent=None)
        for name in _ARRAYS:
            with atomic_path(directory / f"{name}.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, np.ascontiguousarray(getattr(self, name)))
        write_json(directory / SUMMARY, counts.to_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "ExampleTable":
        directory = Path(directory)
        if not is_complete(directory):
            raise PipelineError("no prepared pretraining examples here (summary.json missing)", directory)
        with open(directory / "images.json", encoding="utf-8") as fh:
            image_ids = json.load(fh)
        with open(directory / "sources.json", encoding="utf-8") as fh:
            sources = json.load(fh)
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r" if mmap else None) for name in _ARRAYS}
        return cls(image_ids, sources, **arrays)


def is_complete(directory: str | os.PathLike) -> bool:
    return (Path(directory) / SUMMARY).is_file()


def read_counts(directory: str | os.PathLike) -> ExampleCounts:
    with open(Path(directory) / SUMMARY, encoding="utf-8") as fh:
        return ExampleCounts(**json.load(fh))


def source_names(entries: Sequence[PretrainEntry], chosen: Sequence[str] | None) -> list[str]:
    """The sources to use, in a fixed order (LXMERT's names first)."""
    present = {s for e in entries for s in e.sentf}
    names = [s for s in SOURCES if s in present] + sorted(present - set(SOURCES))
    if chosen is None:
        return names
    return [s for s in chosen if s in present]


def usable_entries(entries: Sequence[PretrainEntry], in_store: Callable[[str], bool], sources: Sequence[str],
                   max_images: int | None = None) -> tuple[list[PretrainEntry], ExampleCounts]:
    """The entries whose image is in the store (the first `max_images` of them), and counts of the rest."""
    counts = ExampleCounts()
    kept = []
    for e in entries:
        n = sum(len(e.sentf.get(s, ())) for s in sources)
        if n == 0:
            continue
        if not in_store(e.image_id):
            counts.missing_images += 1
            counts.missing_sentences += n
            continue
        if max_images is not None and len(kept) >= max_images:
            continue
        kept.append(e)
    return kept, counts


def _answer_ids(label: dict[str, float], answers: AnswerVocab,
                known: dict[str, int | None] | None = None) -> dict[int, float]:
    """answer id -> best score of `label`'s answers in `answers`; `known` memoises
    convert_ans + lookup per raw answer string (a corpus repeats a few thousand answers
    millions of times)."""
    out: dict[int, float] = {}
    for ans, score in label.items():
        if known is None:
            k = answers.label(convert_ans(ans))
        else:
            k = known.get(ans, -1)
            if k == -1:
                k = known[ans] = answers.label(convert_ans(ans))
        if k is not None:
            out[k] = max(out.get(k, 0.0), float(score))
    return out


def build_examples(entries: Sequence[PretrainEntry], sources: Sequence[str], tokenizer,
                   answers: AnswerVocab | None, counts: ExampleCounts) -> ExampleTable:
    """One example per (image, sentence) of `sources`; QA labels mapped into `answers`."""
    image_ids: list[str] = []
    texts: list[str] = []
    image_index: list[int] = []
    source: list[int] = []
    label_start = [0]
    label_answer: list[int] = []
    label_score: list[float] = []
    code = {s: i for i, s in enumerate(sources)}
    known: dict[str, int | None] = {}
    for e in entries:
        img = len(image_ids)
        image_ids.append(e.image_id)
        for src in sources:
            sentences = e.sentf.get(src, ())
            if not sentences:
                continue
            n = len(sentences)
            labels = e.labelf.get(src)
            texts.extend(sentences)
            image_index.extend([img] * n)
            source.extend([code[src]] * n)
            counts.by_source[src] = counts.by_source.get(src, 0) + n
            if labels is None or answers is None:   # captions: no label, one CSR row each
                label_start.extend([len(label_answer)] * n)
                continue
            for k in range(n):
                ids = _answer_ids(labels[k], answers, known)
                if ids:
                    label_answer.extend(ids)
                    label_score.extend(ids.values())
                    counts.qa_examples += 1
                else:
                    counts.qa_without_answer += 1
                label_start.append(len(label_answer))
    counts.examples, counts.images = len(texts), len(image_ids)
    vocab_dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    input_ids = np.zeros((len(texts), tokenizer.max_seq_length), vocab_dtype)
    chunk = 8192
    for a in range(0, len(texts), chunk):
        input_ids[a:a + chunk] = tokenizer.encode_batch(texts[a:a + chunk]).input_ids
    return ExampleTable(image_ids, list(sources), np.asarray(image_index, np.int32), input_ids,
                        np.asarray(source, np.int8), np.asarray(label_start, np.int64),
                        np.asarray(label_answer, np.int32), np.asarray(label_score, np.float32))


def answer_table(entries: Sequence[PretrainEntry], sources: Sequence[str], max_answers: int) -> AnswerVocab:
    """The pretraining answer table: QA answers of the training entries (through LXMERT's
    `convert_ans`), most frequent first, at most `max_answers` (the reference's has 9500)."""
    vocab = AnswerVocab.for_pretraining(entries, sources=sources)
    return AnswerVocab(vocab.answers[:max_answers])
