"""The grounding warm-up: sentences about each image's own detections, before the reference tasks.

Why (a departure from the reference recipe, off by default): trained from scratch, LXMERT sits
on a symmetric saddle for every task where only the relation between words and regions
predicts the target (cross-modality matching above all: its loss stays at ln 2), while a
single-stream transformer of the same size leaves it in a few hundred steps
(research/probe_grounding.py). A first-order hint gets LXMERT off it: sentences whose target the
sentence alone already weakly predicts. Once the model routes the named word to [CLS], the
gradient of the word-region interaction is no longer zero, and the grounding carries over to
the reference's tasks (as object tags anchor the alignment in Oscar, Li et al. 2020).

In the warm-up every row's sentence names one label, drawn afresh per batch from the row's own
image (`sample_presence`): half the rows ask "is there a LABEL?" (QA head, yes / no), half state
"there is a LABEL ." (matching head, true / false). Both heads need it: with questions alone
the QA head learns presence but matching afterwards stays at ln 2; with statements too,
matching falls (docs/pretraining.md; the measurements:
research/2026-11-27-pretraining-words-and-grounding.md). Only the feature store's labels and
the detector's label names are needed, so it works on real data as on the synthetic world:

- true (p = 0.5): a label detected with confidence >= `min_conf`; false: a label detected on no
  box of the image at any confidence;
- the hint: true labels are drawn with weight w(k), false ones with 1 / w(k), where w falls
  geometrically from 1 to 1/8 over the label ids. So P(true | label) falls with the label id
  whatever the store's own label frequencies (even where every label is equally common, as on
  the synthetic world's ground-truth store), and the image decides the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import PipelineError

QUESTIONS = "grounding_questions.npy"   # (labels, max_seq_length) token ids, one question per label
STATEMENTS = "grounding_statements.npy"  # the same as statements, for the matching head
INFO = "grounding.json"                 # the label names and the answer ids of "yes" / "no"
ANSWERS = ("yes", "no")
HINT_RATIO = 8.0                        # w(first label) / w(last label)


def detector_label_names(metadata, data_dir: str | os.PathLike | None = None) -> list[str]:
    """The names of the store's object labels, in label-id order (first synonym of each line).

    From the vocabulary the detector recorded in the store's metadata, else the data root's
    `vg/objects_vocab.txt`, else the shipped Visual Genome vocabulary; each only when its size
    is the store's `num_objects`.
    """
    from detector.config import VOCAB_DIR, read_vocab

    candidates = [(metadata.detector_config or {}).get("objects_vocab")]
    if data_dir is not None:
        candidates.append(Path(data_dir) / "vg" / "objects_vocab.txt")
    candidates.append(VOCAB_DIR / "objects_vocab.txt")
    tried = []
    for path in candidates:
        if not path or not Path(path).is_file():
            continue
        names = [line.split(",")[0].strip() for line in read_vocab(path)]
        if len(names) == metadata.num_objects:
            return names
        tried.append(f"{path} ({len(names)} names)")
    raise PipelineError(f"the grounding warm-up needs the names of the detector's {metadata.num_objects} object "
                        f"labels; no vocabulary of that size found (tried: {', '.join(tried) or 'none'})")


def _with_article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def question(name: str) -> str:
    return f"is there {_with_article(name)}?"


def statement(name: str) -> str:
    return f"there is {_with_article(name)} ."


def write_questions(directory: str | os.PathLike, names: Sequence[str], tokenizer, answer_ids: dict[str, int]) -> None:
    """The tokenised question and statement of every label and the answer ids, for the batches."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, texts in ((QUESTIONS, [question(n) for n in names]), (STATEMENTS, [statement(n) for n in names])):
        ids = tokenizer.encode_batch(texts).input_ids
        with atomic_path(directory / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(ids, dtype=np.int64))
    write_json(directory / INFO, {"labels": list(names), "answers": {a: int(answer_ids[a]) for a in ANSWERS}})


def load_questions(directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(question ids, statement ids, answer ids of yes / no)."""
    directory = Path(directory)
    if not (directory / INFO).is_file():
        raise PipelineError("the grounding warm-up's questions are missing (grounding.json)", directory)
    with open(directory / INFO, encoding="utf-8") as fh:
        info = json.load(fh)
    return np.load(directory / QUESTIONS), np.load(directory / STATEMENTS), info["answers"]


def hint_weights(num_labels: int) -> np.ndarray:
    return HINT_RATIO ** (-np.arange(num_labels) / max(num_labels - 1, 1))


def sample_presence(objects_id: np.ndarray, objects_conf: np.ndarray, rng: np.random.Generator, *,
                    num_labels: int, min_conf: float) -> tuple[np.ndarray, np.ndarray]:
    """One question per row of a (B, N) batch of detections: (label asked, answer is yes).

    A row whose image offers no label for the drawn answer takes the other answer; a row with
    neither (every label seen, none confidently) asks about label 0 with answer -1 (no target).
    """
    weight = hint_weights(num_labels)
    labels = np.zeros(len(objects_id), np.int64)
    yes = np.full(len(objects_id), -1, np.int64)
    for i, (ids, conf) in enumerate(zip(objects_id, objects_conf)):
        ids = np.asarray(ids, np.int64)
        valid = (ids >= 0) & (ids < num_labels)
        confident = np.unique(ids[valid & (np.asarray(conf) >= min_conf)])
        absent = np.setdiff1d(np.arange(num_labels), ids[valid])
        want_yes = rng.random() < 0.5
        pools = [(confident, weight[confident], 1), (absent, 1.0 / weight[absent], 0)]
        for pool, w, answer in (pools if want_yes else pools[::-1]):
            if len(pool):
                labels[i] = pool[rng.choice(len(pool), p=w / w.sum())]
                yes[i] = answer
                break
    return labels, yes
