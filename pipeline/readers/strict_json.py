"""Loading annotation files so that a malformed one stops with the file and the key path.

Every reader goes through `load_json` / `load_jsonl` and the `Where` helper, so an error
reads like `vqa/v2_mscoco_train2014_annotations.json: annotations[12].answers: expected
10 items, got 9` instead of a KeyError from deep inside a list comprehension.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer",
               float: "a number", bool: "true/false"}


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise PipelineError("file not found", path)
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise PipelineError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}", path) from None
    except UnicodeDecodeError as err:
        raise PipelineError(f"not UTF-8 text ({err.reason} at byte {err.start})", path) from None


def load_jsonl(path: str | os.PathLike) -> list[Any]:
    """One JSON value per line (NLVR2); blank lines are allowed and skipped."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError("file not found", path)
    rows = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise PipelineError(f"line {lineno}: invalid JSON ({err})", path) from None
    return rows


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def _isinstance(value: Any, types: type | tuple[type, ...]) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not an id or a count
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


class Where:
    """A position inside one file: `Where(path)["annotations"][12]` knows it is `annotations[12]`.

    A reader makes one per list item and dict key it checks (millions for a pretraining
    corpus), so a child shares its parent's `Path` and spells its key path only when an
    error asks for it.
    """

    __slots__ = ("file", "_parent", "_key")

    def __init__(self, file: str | os.PathLike, keys: str = ""):
        self.file = Path(file)
        self._parent: Where | None = None
        self._key: str | int = keys

    @property
    def keys(self) -> str:
        if self._parent is None:
            return self._key  # type: ignore[return-value]
        parent = self._parent.keys
        if isinstance(self._key, int):
            return f"{parent}[{self._key}]"
        return f"{parent}.{self._key}" if parent else str(self._key)

    def __getitem__(self, key: str | int) -> "Where":
        child = Where.__new__(Where)
        child.file, child._parent, child._key = self.file, self, key if isinstance(key, int) else str(key)
        return child

    def error(self, message: str) -> PipelineError:
        where = f"{self.keys}: " if self.keys else ""
        return PipelineError(f"{where}{message}", self.file)

    def check(self, value: Any, types: type | tuple[type, ...]) -> Any:
        if not _isinstance(value, types):
            raise self.error(f"expected {_type_name(types)}, got {type(value).__name__} {_short(value)}")
        return value

    def get(self, obj: Any, key: str, types: type | tuple[type, ...] | None = None,
            default: Any = ..., nullable: bool = False) -> Any:
        """`obj[key]` checked: a missing key or a wrong type names this key path."""
        if not isinstance(obj, dict):
            raise self.error(f"expected an object, got {type(obj).__name__}")
        if key not in obj:
            if default is not ...:
                return default
            raise self[key].error("missing key")
        value = obj[key]
        if value is None and nullable:
            return None
        if types is not None:
            self[key].check(value, types)
        return value

    def items(self, obj: Any, length: int | None = None):
        """Iterate a list as `(Where of item, item)`, checking its length when given."""
        self.check(obj, list)
        if length is not None and len(obj) != length:
            raise self.error(f"expected {length} items, got {len(obj)}")
        for i, item in enumerate(obj):
            yield self[i], item


def _short(value: Any) -> str:
    text = json.dumps(value)[:60] if not isinstance(value, (bytes, bytearray)) else repr(value)[:60]
    return text
