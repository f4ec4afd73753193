"""Where each benchmark split's official files live under a data root, and loading them.

The layout is the one the datasets ship with (and the synthetic world writes):
`vqa/v2_mscoco_{split}_annotations.json` (+ `vqa/v2_OpenEnded_mscoco_{split}_questions.json`),
`gqa/{split}_all_questions.json`, `gqa/{split}_balanced_questions.json`,
`gqa/{split}_choices.json`, and `nlvr2/{split}.json` (json lines).
GQA's big files may ship as a directory of chunks (`train_all_questions/train_all_questions_0.json`,
...); like the official eval.py, a missing `X.json` with a directory `X/` is read as the
merge of `X/X_*.json`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

TASKS = ("vqa", "gqa", "nlvr2")

_PATTERNS = {
    "vqa": [re.compile(r"^v2_mscoco_(.+)_annotations\.json$")],
    "gqa": [re.compile(r"^(.+)_balanced_questions(\.json)?$"), re.compile(r"^(.+)_all_questions(\.json)?$")],
    "nlvr2": [re.compile(r"^(.+)\.json$")],
}


@dataclass(frozen=True)
class SplitFiles:
    task: str
    split: str
    gold: Path                  # VQA annotations / GQA questions (all, else balanced) / NLVR2 examples
    choices: Path | None = None  # GQA only; None when the split has no choices file
    balanced_only: bool = False  # GQA: only the balanced questions file exists


def available_splits(data: str | os.PathLike, task: str) -> list[str]:
    folder = Path(data) / task
    if not folder.is_dir():
        return []
    found = set()
    for entry in folder.iterdir():
        for pattern in _PATTERNS[task]:
            m = pattern.match(entry.name)
            if m and (entry.is_file() or (task == "gqa" and entry.is_dir() and not m.group(2))):
                found.add(m.group(1))
    return sorted(found)


def _json_source(path: Path) -> Path | None:
    """`path` if it is a file, its chunk directory if that exists instead, else None."""
    if path.is_file():
        return path
    chunks = path.with_suffix("")
    if chunks.is_dir():
        return chunks
    return None


def locate(data: str | os.PathLike, task: str, split: str) -> SplitFiles:
    if task not in TASKS:
        raise PipelineError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    data = Path(data)
    if not data.is_dir():
        raise PipelineError("no such data root directory", data)

    def unknown_split(expected: Path) -> PipelineError:
        splits = available_splits(data, task)
        have = f"available {task} splits: {', '.join(splits)}" if splits else f"no {task} split under {data / task}"
        return PipelineError(f"unknown {task} split {split!r} (no {expected.relative_to(data)}); {have}", data)

    if task == "vqa":
        gold = data / "vqa" / f"v2_mscoco_{split}_annotations.json"
        if not gold.is_file():
            questions = data / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json"
            if questions.is_file():
                raise PipelineError(f"split {split!r} has questions but no annotations file {gold.name} "
                                    "(test splits are scored by the evaluation server only)", gold.parent)
            raise unknown_split(gold)
        return SplitFiles(task, split, gold)
    if task == "gqa":
        folder = data / "gqa"
        all_questions = _json_source(folder / f"{split}_all_questions.json")
        balanced = _json_source(folder / f"{split}_balanced_questions.json")
        if all_questions is None and balanced is None:
            raise unknown_split(folder / f"{split}_balanced_questions.json")
        choices = _json_source(folder / f"{split}_choices.json")
        return SplitFiles(task, split, all_questions or balanced, choices, balanced_only=all_questions is None)
    gold = data / "nlvr2" / f"{split}.json"
    if not gold.is_file():
        raise unknown_split(gold)
    return SplitFiles(task, split, gold)


def load_json(source: Path) -> Any:
    """A json file, or the merge of a chunk directory's `X_*.json` dicts (GQA)."""
    if source.is_dir():
        merged: dict = {}
        chunks = sorted(source.glob(f"{source.name}_*.json"))
        if not chunks:
            raise PipelineError(f"chunk directory has no {source.name}_*.json files", source)
        for chunk in chunks:
            merged.update(_read_json(chunk))
        return merged
    return _read_json(source)


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"not a valid json file ({err})", path) from None
    except OSError as err:
        raise PipelineError(f"cannot read ({err.strerror})", path) from None


def load_json_lines(path: Path) -> list[dict]:
    records = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise PipelineError(f"line {number} is not json ({err})", path) from None
    except OSError as err:
        raise PipelineError(f"cannot read ({err.strerror})", path) from None
    return records
