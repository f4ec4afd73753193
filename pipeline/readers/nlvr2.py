"""NLVR2 `{train,dev,test1}.json`: one JSON object per line."""

from __future__ import annotations

import os

from pipeline.readers.image_ids import image_id_from_path, nlvr2_image_ids
from pipeline.readers.records import NLVR2Example
from pipeline.readers.strict_json import Where, load_jsonl

_LABELS = {"true": True, "false": False}


def read_nlvr2(path: str | os.PathLike) -> list[NLVR2Example]:
    """Examples with the store ids of their two images (`{split}-{set}-{pair}-img0/1`).

    The image ids come from the identifier, as NLVR2 names its files; `left_image`/
    `right_image` fields, where present, override it (files renamed by a user).
    """
    out = []
    for i, row in enumerate(load_jsonl(path)):
        w = Where(path, f"line {i + 1}")
        w.check(row, dict)
        identifier = w.get(row, "identifier", str)
        left, right = nlvr2_image_ids(identifier, path)
        if "left_image" in row:
            left = image_id_from_path(w.get(row, "left_image", str))
            right = image_id_from_path(w.get(row, "right_image", str))
        label = w.get(row, "label", str, None)
        if label is not None:
            if label.lower() not in _LABELS:
                raise w["label"].error(f'expected "True" or "False", got {label!r}')
            label = _LABELS[label.lower()]
        out.append(NLVR2Example(identifier=identifier, sentence=w.get(row, "sentence", str), label=label,
                                left_image_id=left, right_image_id=right))
    return out
