"""LXMERT's preprocessed json files (docs/reference/lxmert.md §1.5, §1.8).

- pretraining (`mscoco_train.json`, `vgnococo.json`, ...): a list of
  `{"img_id", "sentf": {source: [sentences]}, "labelf": {qa_source: [{answer: score}]}}`;
- tasks: `vqa/*.json` (`question_id` int, `answer_type`, `question_type`), `gqa/*.json`
  (`question_id` str), both `{"img_id", "sent", "label": {answer: score}}` (no label on test);
  `nlvr2/*.json` (`identifier`, `img0`, `img1`, `sent`, `label` 0/1, `uid`).
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.atomic import write_json
from pipeline.readers.records import NLVR2TaskExample, PretrainEntry, TaskExample
from pipeline.readers.strict_json import Where, load_json

_NUM = (int, float)


def _label(w: Where, label: dict) -> dict[str, float]:
    w.check(label, dict)
    return {str(a): float(w[a].check(s, _NUM)) for a, s in label.items()}


def _all_str(values: Any) -> bool:
    return type(values) is list and all(type(v) is str for v in values)


def _plain_label(label: Any) -> dict[str, float] | None:
    """`label` as `_label` returns it when every score is a plain number, else None (check it)."""
    if type(label) is not dict:
        return None
    for score in label.values():
        if type(score) is not float and type(score) is not int:
            return None
    return {a: float(s) for a, s in label.items()}


def read_pretrain_json(path: str | os.PathLike) -> list[PretrainEntry]:
    """The entries of one pretraining file, every sentence and label checked.

    A 9M-sentence corpus is checked at the speed of a type test per value: well-formed
    lists and labels are taken as they are, and only a value that fails the test goes
    through the `Where` path that names it in the error.
    """
    where = Where(path)
    out = []
    for w, e in where.items(load_json(path)):
        sentf = {}
        for src, sents in w.get(e, "sentf", dict).items():
            if _all_str(sents):
                sentf[src] = list(sents)
            else:
                sentf[src] = [ws.check(s, str) for ws, s in w["sentf"][src].items(sents)]
        labelf = {}
        for src, labels in w.get(e, "labelf", dict, {}).items():
            wl = w["labelf"][src]
            if src not in sentf:
                raise wl.error("labels for a source with no sentences in sentf")
            plain = [_plain_label(lab) for lab in labels] if type(labels) is list else None
            if plain is not None and len(plain) == len(sentf[src]) and all(p is not None for p in plain):
                labelf[src] = plain
            else:
                labelf[src] = [_label(wi, lab) for wi, lab in wl.items(labels, len(sentf[src]))]
        out.append(PretrainEntry(image_id=w.get(e, "img_id", str), sentf=sentf, labelf=labelf))
    return out


def read_task_json(path: str | os.PathLike) -> list[TaskExample] | list[NLVR2TaskExample]:
    """A task file; NLVR2 files (entries with `img0`/`img1`) give `NLVR2TaskExample`s."""
    where = Where(path)
    data = where.check(load_json(path), list)
    out = []
    for w, e in where.items(data):
        w.check(e, dict)
        if "img0" in e:
            label = w.get(e, "label", int, None)
            if label is not None and label not in (0, 1):
                raise w["label"].error(f"expected 0 or 1, got {label}")
            out.append(NLVR2TaskExample(identifier=w.get(e, "identifier", str), sent=w.get(e, "sent", str),
                                        left_image_id=w.get(e, "img0", str), right_image_id=w.get(e, "img1", str),
                                        label=label, uid=w.get(e, "uid", str, None)))
            continue
        label = w.get(e, "label", dict, None)
        out.append(TaskExample(question_id=w.get(e, "question_id", (int, str)), image_id=w.get(e, "img_id", str),
                               sent=w.get(e, "sent", str),
                               label=None if label is None else _label(w["label"], label),
                               answer_type=w.get(e, "answer_type", str, None),
                               question_type=w.get(e, "question_type", str, None)))
    kinds = {type(x) for x in out}
    if len(kinds) > 1:
        raise where.error("mixes NLVR2 entries (img0/img1) with question entries")
    return out


def write_pretrain_json(path: str | os.PathLike, entries: list[PretrainEntry]) -> None:
    write_json(path, [{"img_id": e.image_id, "sentf": e.sentf, "labelf": e.labelf} for e in entries], indent=None)


def write_task_json(path: str | os.PathLike, examples: list[TaskExample] | list[NLVR2TaskExample]) -> None:
    rows = []
    for x in examples:
        if isinstance(x, NLVR2TaskExample):
            row = {"identifier": x.identifier, "img0": x.left_image_id, "img1": x.right_image_id, "sent": x.sent}
            # absent rather than null: the reference's test files carry neither label nor uid
            if x.label is not None:
                row["label"] = x.label
            if x.uid is not None:
                row["uid"] = x.uid
        else:
            row = {"img_id": x.image_id, "question_id": x.question_id, "sent": x.sent}
            if x.label is not None:
                row["label"] = x.label
            if x.answer_type is not None:
                row["answer_type"] = x.answer_type
            if x.question_type is not None:
                row["question_type"] = x.question_type
        rows.append(row)
    write_json(path, rows, indent=None)
