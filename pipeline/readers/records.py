"""Small typed records that every stage reads; `image_id` is always the feature-store id."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Caption:
    image_id: str
    text: str
    source: str = "mscoco"          # "mscoco" | "vg"
    caption_id: int | None = None   # COCO annotation id / VG region id
    box: tuple[float, float, float, float] | None = None   # VG region x, y, w, h


@dataclass(frozen=True)
class QAItem:
    """A question with one answer (Visual Genome QA)."""
    question_id: int
    image_id: str
    question: str
    answer: str
    source: str = "vg"


@dataclass(frozen=True)
class Box:
    """A labelled box of Visual Genome (x, y, w, h in pixels, as the files give them)."""
    object_id: int
    x: float
    y: float
    w: float
    h: float
    names: tuple[str, ...]
    attributes: tuple[str, ...] = ()

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.w, self.y + self.h)


@dataclass(frozen=True)
class ImageObjects:
    image_id: str
    objects: tuple[Box, ...]
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Relationship:
    image_id: str
    relationship_id: int
    predicate: str
    subject_id: int
    object_id: int


@dataclass(frozen=True)
class VGImage:
    image_id: str
    width: int
    height: int
    url: str | None = None
    coco_id: int | None = None


@dataclass(frozen=True)
class VQAQuestion:
    question_id: int
    image_id: str
    question: str
    answers: tuple[str, ...] = ()          # the 10 raw annotator answers (empty for test)
    answer_type: str | None = None         # yes/no | number | other
    question_type: str | None = None       # e.g. "what color is the"
    multiple_choice_answer: str | None = None
    scores: dict[str, float] = field(default_factory=dict)   # normalised answer -> soft score


@dataclass(frozen=True)
class GQAQuestion:
    question_id: str
    image_id: str
    question: str
    answer: str | None = None
    full_answer: str | None = None
    is_balanced: bool = True
    types: dict[str, str] = field(default_factory=dict)      # structural, semantic, detailed
    groups: dict[str, str | None] = field(default_factory=dict)   # global, local
    entailed: tuple[str, ...] = ()
    equivalent: tuple[str, ...] = ()
    semantic: tuple[dict[str, Any], ...] = ()
    semantic_str: str | None = None


@dataclass(frozen=True)
class GQAChoices:
    valid: tuple[str, ...]
    plausible: tuple[str, ...]


@dataclass(frozen=True)
class SceneObject:
    object_id: str
    name: str
    x: float
    y: float
    w: float
    h: float
    attributes: tuple[str, ...] = ()
    relations: tuple[tuple[str, str], ...] = ()   # (relation name, target object id)


@dataclass(frozen=True)
class SceneGraph:
    image_id: str
    width: int
    height: int
    objects: dict[str, SceneObject]


@dataclass(frozen=True)
class NLVR2Example:
    identifier: str
    sentence: str
    label: bool | None
    left_image_id: str
    right_image_id: str


@dataclass(frozen=True)
class PretrainEntry:
    """One image of LXMERT's `mscoco_train.json`-style files."""
    image_id: str
    sentf: dict[str, list[str]]                       # source -> sentences
    labelf: dict[str, list[dict[str, float]]]         # QA source -> one label dict per sentence


@dataclass(frozen=True)
class TaskExample:
    """One entry of LXMERT's `vqa/*.json` or `gqa/*.json`."""
    question_id: int | str
    image_id: str
    sent: str
    label: dict[str, float] | None = None    # None on test files
    answer_type: str | None = None
    question_type: str | None = None


@dataclass(frozen=True)
class NLVR2TaskExample:
    """One entry of LXMERT's `nlvr2/*.json`."""
    identifier: str
    sent: str
    left_image_id: str
    right_image_id: str
    label: int | None = None
    uid: str | None = None
