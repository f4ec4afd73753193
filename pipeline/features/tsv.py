"""Bottom-up-attention TSV interop (docs/reference/lxmert.md §1.7).

One image per line, tab-separated, no header:
`img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features`,
arrays as base64 of raw little-endian bytes: ids int64, confidences/boxes/features float32.
Both directions stream: neither holds more than one shard of images in memory.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pipeline.atomic import atomic_open
from pipeline.errors import PipelineError
from pipeline.features.manifest import append_failures, finalize_store
from pipeline.features.schema import ImageFeatures, StoreMetadata
from pipeline.features.lock import StoreBusy, store_lock
from pipeline.features.shard import nonfinite_problem, shard_name, write_shard
from pipeline.features.store import FeatureStore

FIELDNAMES = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features")


class BadLine(ValueError):
    pass


def _decode(text: str, dtype, count: int, name: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadLine(f"field {name}: bad base64 ({err})") from None
    item = np.dtype(dtype).itemsize
    if len(raw) % item or (count >= 0 and len(raw) != count * item):
        expected = f"{count} x {np.dtype(dtype).name}" if count >= 0 else f"a multiple of {item} bytes"
        raise BadLine(f"field {name}: {len(raw)} bytes, expected {expected}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


def parse_line(fields: list[str], feature_dim: int | None) -> ImageFeatures:
    if len(fields) != len(FIELDNAMES):
        raise BadLine(f"{len(fields)} tab-separated fields, expected {len(FIELDNAMES)}")
    img_id, h, w, oid, oconf, aid, aconf, nb, boxes, feats = fields
    try:
        height, width, n = int(h), int(w), int(nb)
    except ValueError:
        raise BadLine(f"img_h/img_w/num_boxes must be integers, got {h!r}/{w!r}/{nb!r}") from None
    if n < 0:
        raise BadLine(f"num_boxes is negative ({n})")
    f = _decode(feats, np.float32, -1, "features")
    if n and f.size % n:
        raise BadLine(f"field features: {f.size} floats do not divide into {n} boxes")
    dim = f.size // n if n else (feature_dim or 0)
    if feature_dim is not None and dim != feature_dim:
        raise BadLine(f"field features: {dim} values per box, expected {feature_dim} like the lines before")
    return ImageFeatures(
        image_id=img_id, width=width, height=height,
        boxes=_decode(boxes, np.float32, 4 * n, "boxes").reshape(n, 4),
        features=f.reshape(n, dim),
        objects_id=_decode(oid, np.int64, n, "objects_id").astype(np.int32),
        objects_conf=_decode(oconf, np.float32, n, "objects_conf"),
        attrs_id=_decode(aid, np.int64, n, "attrs_id").astype(np.int32),
        attrs_conf=_decode(aconf, np.float32, n, "attrs_conf"),
    )


@dataclass
class ImportReport:
    images: int = 0
    shards: int = 0
    bad_lines: list[dict] = field(default_factory=list)


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as err:   # not a line's fault: the whole file is in another encoding
                raise PipelineError(f"not UTF-8 text ({err.reason}: byte 0x{err.object[err.start]:02x}); a "
                                    f"features TSV is ASCII", path) from None
            except csv.Error as err:
                yield reader.line_num, [f"\0csv error: {err}"]
                continue
            if row:
                yield reader.line_num, row


def import_tsv(files: Iterable[str | os.PathLike], out: str | os.PathLike, *, dtype: str = "float16",
               shard_size: int = 1000, skip_bad_lines: bool = False, num_objects: int = 1600,
               num_attributes: int = 400, detector: str = "bottom-up-attention (imported TSV)") -> ImportReport:
    """Stream TSV files into a feature store; a bad line stops with file:line unless skipped."""
    out = Path(out)
    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise PipelineError("no such TSV file", f)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with store_lock(out, "features import-tsv"):
            return _import_locked(files, out, dtype, shard_size, skip_bad_lines, num_objects, num_attributes,
                                  detector)
    except StoreBusy:
        raise         # the folder is the other run's
    except PipelineError:
        if created:   # a failed import leaves no half-made store folder behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _import_locked(files: list[Path], out: Path, dtype: str, shard_size: int, skip_bad_lines: bool,
                   num_objects: int, num_attributes: int, detector: str) -> ImportReport:
    if (out / "manifest.json").exists():
        raise PipelineError("already holds a feature store; choose an empty --out directory", out)
    report = ImportReport()
    meta: StoreMetadata | None = None
    pending: list[ImageFeatures] = []
    seen: set[str] = set()

    def flush() -> None:
        if pending:
            write_shard(out / shard_name(report.shards), pending, meta)
            report.shards += 1
            pending.clear()

    for path in files:
        for line_no, fields in _lines(path):
            try:
                if fields and fields[0].startswith("\0"):
                    raise BadLine(fields[0][1:])
                img = parse_line(fields, meta.feature_dim if meta else None)
                if img.image_id in seen:
                    raise BadLine(f"duplicate img_id {img.image_id!r}")
                problem = nonfinite_problem(img, dtype)
                if problem:
                    raise BadLine(f"img_id {img.image_id!r}: {problem}")
            except BadLine as err:
                where = f"{path}:{line_no}"
                if not skip_bad_lines:
                    raise PipelineError(f"line {line_no}: {err} (use --skip-bad-lines to skip such lines)", path) from None
                report.bad_lines.append({"image": where, "reason": str(err)})
                continue
            if meta is None:
                meta = StoreMetadata(detector=detector, detector_config={}, weights_sha256="unknown",
                                     box_rule={"selection": "imported", "sources": [str(f) for f in files]},
                                     feature_dim=img.features.shape[1], num_objects=num_objects,
                                     num_attributes=num_attributes, feature_dtype=dtype)
            seen.add(img.image_id)
            pending.append(img)
            report.images += 1
            if len(pending) >= shard_size:
                flush()
    if meta is None:
        raise PipelineError("no valid lines in the TSV input", files[0] if files else out)
    flush()
    append_failures(out, report.bad_lines)
    finalize_store(out, meta)
    return report


def _b64(array: np.ndarray, dtype) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode("ascii")


def format_line(img: ImageFeatures) -> str:
    return "\t".join([
        img.image_id, str(img.height), str(img.width),
        _b64(img.objects_id, np.int64), _b64(img.objects_conf, np.float32),
        _b64(img.attrs_id, np.int64), _b64(img.attrs_conf, np.float32),
        str(img.num_boxes), _b64(img.boxes, np.float32), _b64(img.features, np.float32),
    ]) + "\n"


def export_tsv(store_dir: str | os.PathLike, out_file: str | os.PathLike) -> int:
    """Write every image as one TSV line; every shard is hashed first (a copy must not carry
    a corrupted shard's bytes on as if they were good)."""
    store = FeatureStore(store_dir, verify="always")
    n = 0
    with atomic_open(out_file, "w", encoding="utf-8", newline="") as fh:
        for img in store.iter_images():
            fh.write(format_line(img))
            n += 1
    return n
