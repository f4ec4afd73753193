"""What one feature-store row holds, and the Arrow layout it is stored in.

Layout decisions (measured in docs/reference/ecosystem.md §1 and bench/bench_features.py):
- `features` is a `binary` blob per image holding the C-contiguous little-endian
  (num_boxes, D) array. A binary column decodes ~7x faster than `fixed_size_list` or the
  FixedShapeTensor type (both are Parquet LIST columns whose repetition/definition levels are
  decoded per value), and one-image access is ~15x faster. The price: SQL engines see
  opaque bytes, so dtype and D are in the schema metadata.
- Small per-box columns (`boxes` flattened x1,y1,x2,y2, ids, confidences) are plain Arrow
  lists, readable by any Parquet tool; they are a few hundred bytes per image.
- No dictionary encoding (on float16 it picks RLE_DICTIONARY: larger and 4x slower), no
  compression by default (decode is memcpy-fast; zstd level 1 is an option that saves ~25%
  at 30% zeros when storage or network is the bottleneck).
- Row groups of 32 images: PyArrow cannot read below a row group, so one random `get`
  decodes 32 images (~4.7 MB at 36x2048 float16), ~0.5 ms; sequential scans are unaffected.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

FORMAT_VERSION = 1
METADATA_KEY = b"lxmert_pipeline"
FEATURE_DTYPES = ("float16", "float32")
DEFAULT_ROW_GROUP_SIZE = 32

ARROW_SCHEMA = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("num_boxes", pa.int32(), nullable=False),
    pa.field("boxes", pa.list_(pa.float32()), nullable=False),
    pa.field("features", pa.binary(), nullable=False),
    pa.field("objects_id", pa.list_(pa.int32()), nullable=False),
    pa.field("objects_conf", pa.list_(pa.float32()), nullable=False),
    pa.field("attrs_id", pa.list_(pa.int32()), nullable=False),
    pa.field("attrs_conf", pa.list_(pa.float32()), nullable=False),
])
COLUMNS = tuple(ARROW_SCHEMA.names)


@dataclass
class ImageFeatures:
    """One image's detector output, in original-image pixels."""

    image_id: str
    width: int
    height: int
    boxes: np.ndarray          # (N, 4) float32, x1 y1 x2 y2
    features: np.ndarray       # (N, D) float16 or float32
    objects_id: np.ndarray     # (N,) int32, background excluded
    objects_conf: np.ndarray   # (N,) float32
    attrs_id: np.ndarray       # (N,) int32
    attrs_conf: np.ndarray     # (N,) float32

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def normalized_boxes(self) -> np.ndarray:
        """Boxes divided by image width/height, as LXMERT feeds them (not mapped to [-1, 1])."""
        scale = np.array([self.width, self.height, self.width, self.height], dtype=np.float32)
        return self.boxes / scale


@dataclass
class StoreMetadata:
    """What made a store; stored in manifest.json and in every shard's schema metadata."""

    detector: str
    detector_config: dict
    weights_sha256: str
    box_rule: dict
    feature_dim: int
    num_objects: int
    num_attributes: int
    feature_dtype: str = "float16"
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES}, got {self.feature_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StoreMetadata":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()

    def differences(self, other: "StoreMetadata") -> list[str]:
        """Fields that differ, for error messages naming what disagrees."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if a[k] != b.get(k)]
