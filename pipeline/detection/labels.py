"""Visual Genome names -> detector label ids through the vocabulary files' synonyms.

A vocabulary line is one class, its synonyms separated by commas ("gray,grey"); every
synonym maps to the line's index (the bottom-up-attention `setup_vg.py` rule). Names are
compared lower-cased and stripped, as the VG reader gives them. Names outside the
vocabulary are counted (per name) so the caller can report them; nothing is dropped
without being counted.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from pipeline.readers.vg import read_vocab


@dataclass
class LabelSpace:
    path: str
    names: list[str]                               # display name (first synonym) per id
    index: dict[str, int]                          # every synonym -> id
    unknown: collections.Counter = field(default_factory=collections.Counter)

    @classmethod
    def from_vocab(cls, path: str | os.PathLike) -> "LabelSpace":
        classes = read_vocab(path)
        index: dict[str, int] = {}
        for i, synonyms in enumerate(classes):
            for name in synonyms:
                key = name.strip().lower()
                if key in index and index[key] != i:
                    raise PipelineError(f"{key!r} names two classes (lines {index[key] + 1} and {i + 1})", path)
                index[key] = i
        return cls(os.fspath(path), [c[0] for c in classes], index)

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self, name: str) -> int | None:
        """The id of `name`, or None (and the name is counted as unknown)."""
        found = self.index.get(name.strip().lower())
        if found is None:
            self.unknown[name] += 1
        return found

    def first_known(self, names: tuple[str, ...]) -> int | None:
        """VG objects carry a list of names: the first one in the vocabulary wins; if none is,
        the first name is counted as unknown."""
        for name in names:
            found = self.index.get(name.strip().lower())
            if found is not None:
                return found
        if names:
            self.unknown[names[0]] += 1
        return None

    def unknown_summary(self, top: int = 10) -> str:
        total = sum(self.unknown.values())
        common = ", ".join(f"{name!r} x{n}" for name, n in self.unknown.most_common(top))
        more = f", ... ({len(self.unknown)} distinct)" if len(self.unknown) > top else ""
        return f"{total} not in {os.path.basename(self.path)}: {common}{more}" if total else ""
