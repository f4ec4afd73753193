"""The official submission formats: read (to score any model's file) and write (to submit).

* VQA v2: a json array `[{"question_id": int, "answer": str}]` (visualqa.org "Results Format");
* GQA: a json array `[{"questionId": str, "prediction": str}]` (eval.py; ids are strings and
  may have leading zeros, e.g. "07333408", so integers are refused rather than guessed);
* NLVR2: CSV lines `identifier,label` with label True/False, no header (metrics.py).

Like the official scripts, a repeated id keeps its last entry; readers count repeats so
the caller can say so. Writers publish atomically and, given the ids a split requires,
refuse to write a submission that does not cover every one of them (servers reject those).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from pipeline.atomic import atomic_open
from pipeline.errors import PipelineError

NLVR2_LABELS = ("True", "False")


@dataclass
class Predictions:
    """id -> answer, in file order; `duplicates` counts entries that repeated an earlier id."""
    answers: dict[Hashable, str]
    duplicates: int = 0
    path: str | None = None
    conflicting: list = field(default_factory=list)  # ids whose repeats disagree


def _record(answers: dict, key: Hashable, value: str, out: Predictions) -> None:
    if key in answers:
        out.duplicates += 1
        if answers[key] != value:
            out.conflicting.append(key)
    answers[key] = value


def _load_json_array(path: Path, what: str) -> list:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise PipelineError("no such predictions file", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PipelineError(f"not a json file ({err})", path) from None
    if not isinstance(data, list):
        raise PipelineError(f"expected a json array of {what}, got a json {type(data).__name__}", path)
    return data


def read_vqa_predictions(path: str | os.PathLike) -> Predictions:
    path = Path(path)
    out = Predictions({}, path=str(path))
    for i, entry in enumerate(_load_json_array(path, '{"question_id": int, "answer": str}')):
        if not isinstance(entry, dict) or "question_id" not in entry or "answer" not in entry:
            raise PipelineError(f'entry {i} is not {{"question_id": int, "answer": str}}: {entry!r:.80}', path)
        qid, answer = entry["question_id"], entry["answer"]
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise PipelineError(f"entry {i}: question_id must be an integer as in the annotations, "
                                f"got {qid!r}", path)
        if not isinstance(answer, str):
            raise PipelineError(f"entry {i} (question {qid}): answer must be a string, got {answer!r}", path)
        _record(out.answers, qid, answer, out)
    return out


def read_gqa_predictions(path: str | os.PathLike) -> Predictions:
    path = Path(path)
    out = Predictions({}, path=str(path))
    for i, entry in enumerate(_load_json_array(path, '{"questionId": str, "prediction": str}')):
        if not isinstance(entry, dict) or "questionId" not in entry or "prediction" not in entry:
            raise PipelineError(f'entry {i} is not {{"questionId": str, "prediction": str}}: {entry!r:.80}', path)
        qid, answer = entry["questionId"], entry["prediction"]
        if not isinstance(qid, str):
            raise PipelineError(f"entry {i}: questionId must be a string (ids can have leading zeros), "
                                f"got {qid!r}", path)
        if not isinstance(answer, str):
            raise PipelineError(f"entry {i} (question {qid}): prediction must be a string, got {answer!r}", path)
        _record(out.answers, qid, answer, out)
    return out


def read_nlvr2_predictions(path: str | os.PathLike) -> Predictions:
    """`identifier,label` lines. Blank lines and a leading `identifier,...` header are skipped
    (the official script crashes on the former and scores the latter as a stray id)."""
    path = Path(path)
    out = Predictions({}, path=str(path))
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise PipelineError("no such predictions file", path) from None
    except UnicodeDecodeError as err:
        raise PipelineError(f"not a text file ({err})", path) from None
    for number, line in enumerate(lines, 1):
        fields = line.strip().split(",")
        if fields == [""]:
            continue
        if number == 1 and fields[0].strip().lower() == "identifier":
            continue
        if len(fields) < 2:
            raise PipelineError(f"line {number} is not 'identifier,label': {line!r:.80}", path)
        identifier, label = fields[0], fields[1]
        if label.lower() not in ("true", "false"):
            raise PipelineError(f"line {number}: label must be True or False (the official script compares "
                                f"the strings), got {label!r}", path)
        _record(out.answers, identifier, label, out)
    return out


def _check_coverage(answers: Mapping, required_ids: Sequence | None, path: Path) -> list:
    if required_ids is None:
        return list(answers)
    missing = [i for i in required_ids if i not in answers]
    if missing:
        shown = ", ".join(str(i) for i in missing[:5])
        raise PipelineError(f"not writing a submission without {len(missing)} of the {len(required_ids)} "
                            f"required predictions (first: {shown})", path)
    return list(required_ids)


def write_vqa_submission(path: str | os.PathLike, answers: Mapping[int, str],
                         question_ids: Sequence[int] | None = None) -> Path:
    """Write `[{"question_id", "answer"}]` in `question_ids` order (all required) or dict order."""
    path = Path(path)
    ids = _check_coverage(answers, question_ids, path)
    _dump(path, [{"question_id": int(q), "answer": answers[q]} for q in ids])
    return path


def write_gqa_submission(path: str | os.PathLike, answers: Mapping[str, str],
                         question_ids: Sequence[str] | None = None) -> Path:
    """Write `[{"questionId", "prediction"}]` in `question_ids` order (all required) or dict order."""
    path = Path(path)
    ids = _check_coverage(answers, question_ids, path)
    _dump(path, [{"questionId": str(q), "prediction": answers[q]} for q in ids])
    return path


def write_nlvr2_submission(path: str | os.PathLike, answers: Mapping[str, Any],
                           identifiers: Sequence[str] | None = None) -> Path:
    """Write `identifier,True|False` lines; labels may be bools or the strings (any case)."""
    path = Path(path)
    ids = _check_coverage(answers, identifiers, path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        for identifier in ids:
            if "," in identifier or "\n" in identifier:
                raise PipelineError(f"identifier {identifier!r} cannot be written as CSV", path)
            fh.write(f"{identifier},{_nlvr2_label(answers[identifier], path)}\n")
    return path


def _nlvr2_label(value: Any, path: Path) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return "True" if value.lower() == "true" else "False"
    raise PipelineError(f"NLVR2 label must be True or False, got {value!r}", path)


def _dump(path: Path, records: list) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(records, fh, ensure_ascii=False)
        fh.write("\n")
