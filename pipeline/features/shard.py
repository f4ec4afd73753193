"""One Parquet shard: writing it atomically, reading its metadata and rows."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError
from pipeline.features.schema import (ARROW_SCHEMA, DEFAULT_ROW_GROUP_SIZE, FORMAT_VERSION, METADATA_KEY,
                                      ImageFeatures, StoreMetadata)

SHARD_GLOB = "shard-*.parquet"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


@dataclass
class ShardInfo:
    name: str
    num_rows: int
    sha256: str
    num_bytes: int

    def to_dict(self) -> dict:
        return {"name": self.name, "num_rows": self.num_rows, "sha256": self.sha256, "num_bytes": self.num_bytes}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _list_array(arrays: list[np.ndarray], dtype: np.dtype, arrow_type: pa.DataType) -> pa.Array:
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int32, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.ascontiguousarray(a, dtype=dtype).ravel() for a in arrays]) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=arrow_type))


def _binary_array(arrays: list[np.ndarray], dtype: np.dtype) -> pa.Array:
    """One binary value per array: its C-order bytes as `dtype`. Each array is written once,
    straight into the column's single data buffer (cast on the way when its dtype differs,
    as `astype` would): a shard of 1000 images x 36 x 2048 float16 is 147 MB, and copying it
    per image and then again to join the copies cost twice that in time and transient memory."""
    sizes = np.fromiter((a.size * dtype.itemsize for a in arrays), dtype=np.int64, count=len(arrays))
    if sizes.sum() >= 2**31:
        raise ValueError("a shard's features exceed 2 GiB; use a smaller --shard-size")
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for a, start, stop in zip(arrays, offsets[:-1].tolist(), offsets[1:].tolist()):
        data[start:stop].view(dtype).reshape(a.shape)[...] = a
    return pa.Array.from_buffers(pa.binary(), len(arrays), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _check_image(img: ImageFeatures, meta: StoreMetadata) -> None:
    n = img.num_boxes
    problems = []
    if img.boxes.shape != (n, 4):
        problems.append(f"boxes shape {img.boxes.shape}")
    if img.features.shape != (n, meta.feature_dim):
        problems.append(f"features shape {img.features.shape}, expected ({n}, {meta.feature_dim})")
    for name in ("objects_id", "objects_conf", "attrs_id", "attrs_conf"):
        if getattr(img, name).shape != (n,):
            problems.append(f"{name} shape {getattr(img, name).shape}")
    if problems:
        raise ValueError(f"image {img.image_id!r}: " + "; ".join(problems))
    problem = nonfinite_problem(img, meta.feature_dtype)
    if problem:
        raise ValueError(f"image {img.image_id!r}: {problem}")


def nonfinite_problem(img: ImageFeatures, feature_dtype: str) -> str | None:
    """What is not finite in an image's boxes or features as they would be stored (float32
    features above 65504 become inf in float16), or None. Training on such a row turns the
    loss into NaN, far from the row that caused it."""
    found = []
    boxes = np.asarray(img.boxes)
    if not np.isfinite(boxes).all():
        found.append(f"{int((~np.isfinite(boxes)).sum())} non-finite box coordinates")
    feats = np.asarray(img.features)
    with np.errstate(over="ignore", invalid="ignore"):
        stored = feats.astype(feature_dtype, copy=False)
    bad = int((~np.isfinite(stored)).sum())
    if bad:
        overflow = bool(np.isfinite(feats).all())
        found.append(f"{bad} non-finite feature values" + (f" (finite values beyond the {feature_dtype} range)"
                                                           if overflow else " (NaN or inf)"))
    return "; ".join(found) or None


def images_to_table(images: Sequence[ImageFeatures], meta: StoreMetadata) -> pa.Table:
    for img in images:
        _check_image(img, meta)
    ids = [img.image_id for img in images]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate image_id in one shard: {dup[:5]}")
    fdtype = np.dtype(meta.feature_dtype).newbyteorder("<")
    columns = [
        pa.array(ids, type=pa.string()),
        pa.array([int(i.width) for i in images], type=pa.int32()),
        pa.array([int(i.height) for i in images], type=pa.int32()),
        pa.array([i.num_boxes for i in images], type=pa.int32()),
        _list_array([i.boxes for i in images], np.float32, pa.float32()),
        _binary_array([np.asarray(i.features) for i in images], fdtype),
        _list_array([i.objects_id for i in images], np.int32, pa.int32()),
        _list_array([i.objects_conf for i in images], np.float32, pa.float32()),
        _list_array([i.attrs_id for i in images], np.int32, pa.int32()),
        _list_array([i.attrs_conf for i in images], np.float32, pa.float32()),
    ]
    schema = ARROW_SCHEMA.with_metadata({METADATA_KEY: meta.to_bytes()})
    return pa.Table.from_arrays(columns, schema=schema)


def write_shard(path: str | os.PathLike, images: Sequence[ImageFeatures], metadata: StoreMetadata, *,
                compression: str | None = None, row_group_size: int = DEFAULT_ROW_GROUP_SIZE) -> ShardInfo:
    """Write `images` as one shard, atomically: the final name appears only when complete.

    Deterministic for the same input, so a task that Dask re-runs (after a worker death)
    rewrites identical bytes.
    """
    path = Path(path)
    table = images_to_table(images, metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression=compression or "none",
                       use_dictionary=False, write_statistics=["image_id", "width", "height", "num_boxes"],
                       store_schema=True)
    return ShardInfo(path.name, table.num_rows, file_sha256(path), path.stat().st_size)


def read_shard_metadata(path: str | os.PathLike) -> tuple[StoreMetadata, int]:
    """(metadata, num_rows) from a shard's footer, without reading any data."""
    path = Path(path)
    try:
        footer = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as err:
        raise PipelineError(f"not a readable Parquet shard (truncated or corrupted?): {err}", path) from None
    raw = (footer.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise PipelineError("Parquet file has no lxmert_pipeline schema metadata: not a feature shard", path)
    try:
        meta = StoreMetadata.from_dict(json.loads(raw))
    except (ValueError, TypeError) as err:
        raise PipelineError(f"unreadable lxmert_pipeline metadata: {err}", path) from None
    if meta.format_version > FORMAT_VERSION:
        raise PipelineError(f"shard format version {meta.format_version} is newer than this "
                            f"lxmert-pipeline understands ({FORMAT_VERSION}); upgrade it", path)
    names = footer.schema.to_arrow_schema().names
    if names != ARROW_SCHEMA.names:
        raise PipelineError(f"columns {names} differ from the feature-store schema {ARROW_SCHEMA.names}", path)
    return meta, footer.num_rows


def rows_from_batch(batch: pa.RecordBatch | pa.Table, meta: StoreMetadata,
                    features: Sequence[np.ndarray] | None = None) -> list[ImageFeatures]:
    """Decode rows to ImageFeatures; feature arrays are zero-copy views of the Arrow buffers,
    or the given `features` (views into the memory-mapped file) when the batch lacks them."""
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else None
        if batch is None:
            return []
    col = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
    n = batch.num_rows
    dim = meta.feature_dim
    fdtype = np.dtype(meta.feature_dtype).newbyteorder("<")
    if features is None:
        feat = col["features"]
        # binary layout: buffers() = [validity, offsets(int32), data]
        f_offsets = np.frombuffer(feat.buffers()[1], dtype=np.int32)[feat.offset: feat.offset + n + 1]
        f_data = feat.buffers()[2]
        f_all = np.frombuffer(f_data, dtype=np.uint8) if f_data is not None else np.zeros(0, np.uint8)
        features = [f_all[f_offsets[r]: f_offsets[r + 1]] for r in range(n)]

    def flat(name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
        arr = col[name]
        offs = arr.offsets.to_numpy()
        values = arr.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        return offs, values

    b_off, b_val = flat("boxes", np.float32)
    oi_off, oi_val = flat("objects_id", np.int32)
    oc_off, oc_val = flat("objects_conf", np.float32)
    ai_off, ai_val = flat("attrs_id", np.int32)
    ac_off, ac_val = flat("attrs_conf", np.float32)
    ids = col["image_id"].to_pylist()
    widths = col["width"].to_numpy()
    heights = col["height"].to_numpy()
    nboxes = col["num_boxes"].to_numpy()
    out = []
    for r in range(n):
        k = int(nboxes[r])
        fbytes = features[r]
        if fbytes.nbytes != k * dim * fdtype.itemsize:
            raise PipelineError(f"image {ids[r]!r}: feature blob has {fbytes.nbytes} bytes, expected "
                                f"{k}x{dim} {meta.feature_dtype}")
        out.append(ImageFeatures(
            image_id=ids[r], width=int(widths[r]), height=int(heights[r]),
            boxes=b_val[b_off[r]: b_off[r + 1]].reshape(k, 4),
            features=fbytes.view(fdtype).reshape(k, dim),
            objects_id=oi_val[oi_off[r]: oi_off[r + 1]], objects_conf=oc_val[oc_off[r]: oc_off[r + 1]],
            attrs_id=ai_val[ai_off[r]: ai_off[r + 1]], attrs_conf=ac_val[ac_off[r]: ac_off[r + 1]],
        ))
    return out


def nonfinite_rows(path: str | os.PathLike, meta: StoreMetadata) -> list[tuple[str, str]]:
    """[(image_id, problem)] for every row of a shard whose boxes or features are not finite,
    one row group at a time (a vectorised scan of the raw values, no per-image decoding)."""
    fdtype = np.dtype(meta.feature_dtype).newbyteorder("<")
    found: list[tuple[str, str]] = []
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=DEFAULT_ROW_GROUP_SIZE, columns=["image_id", "boxes", "features"]):
        feats = batch.column(2)
        n = batch.num_rows
        offsets = np.frombuffer(feats.buffers()[1], dtype=np.int32)[feats.offset: feats.offset + n + 1]
        data = feats.buffers()[2]
        values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        span = values[offsets[0]: offsets[-1]]
        bad_feat = np.zeros(n, dtype=np.int64)
        if span.size % fdtype.itemsize == 0:
            bad_feat = _count_per_row(~np.isfinite(span.view(fdtype)),
                                      (offsets - offsets[0]) // fdtype.itemsize)
        boxes = batch.column(1)
        box_offsets = boxes.offsets.to_numpy()
        bad_box = _count_per_row(~np.isfinite(boxes.flatten().to_numpy(zero_copy_only=False)),
                                 box_offsets - box_offsets[0])
        if bad_feat.any() or bad_box.any():
            ids = batch.column(0).to_pylist()
            for r in np.flatnonzero(bad_feat | bad_box):
                what = []
                if bad_box[r]:
                    what.append(f"{int(bad_box[r])} non-finite box coordinates")
                if bad_feat[r]:
                    what.append(f"{int(bad_feat[r])} non-finite feature values")
                found.append((ids[r], "; ".join(what)))
    return found


def _count_per_row(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many of `flags` are set within each [offsets[r], offsets[r+1]) (empty rows allowed)."""
    if not flags.any():
        return np.zeros(len(offsets) - 1, dtype=np.int64)
    total = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return total[offsets[1:]] - total[offsets[:-1]]
