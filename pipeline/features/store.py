"""`FeatureStore`: random and batched access to a directory of feature shards.

Memory model: the store keeps an index (image_id -> shard, row, plus width/height/box count:
a few dozen bytes per image) and nothing else per image. Shards are memory-mapped: in an
uncompressed shard every array of an image is a fixed byte range of the file (pages.py), so
`get` returns read-only numpy views of the OS page cache, shared by every process reading
the same files; a DataLoader worker never copies the store. Compressed shards (zstd) are
decoded through PyArrow one row group at a time, with a small cache. Pickling a store (to
send it to a worker process) carries the index, not open files: each process re-opens
the shards lazily.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.features.integrity import check_checksums
from pipeline.features.manifest import load_manifest
from pipeline.features.pages import blob_offsets, list_value_regions
from pipeline.features.schema import ImageFeatures, StoreMetadata
from pipeline.features.shard import read_shard_metadata, rows_from_batch

_LIST_COLUMNS = {"boxes": (np.float32, 4), "objects_id": (np.int32, 1), "objects_conf": (np.float32, 1),
                 "attrs_id": (np.int32, 1), "attrs_conf": (np.float32, 1)}


@dataclass
class _MappedShard:
    """Byte positions of every array of one uncompressed shard inside its mmap."""

    buf: mmap.mmap
    blobs: np.ndarray              # (rows, 2) offset, length of each feature blob
    regions: dict[str, np.ndarray]  # column -> (row groups, 2) offset, length of its values
    box_start: np.ndarray          # (rows,) index of the row's first box within its row group


class FeatureStore:
    """Read access to a feature store directory.

    `zero_copy=True` (default) reads uncompressed shards straight from the memory map;
    `False` always decodes through PyArrow: the reference path the fast one is tested against.
    `verify`: "auto" (default) checks every shard's sha256 unless a verification stamp says
    this file was hashed before; "always" hashes every shard; "never" checks only sizes and
    footers (pipeline/features/integrity.py).
    """

    def __init__(self, directory: str | os.PathLike, *, cache_row_groups: int = 8, zero_copy: bool = True,
                 verify: str = "auto"):
        self.directory = Path(directory)
        manifest = load_manifest(self.directory)
        self.metadata = StoreMetadata.from_dict(manifest["metadata"])
        self.cache_row_groups = cache_row_groups
        self.zero_copy = zero_copy
        self._shards: list[str] = [s["name"] for s in manifest["shards"]]
        self._rg_starts: list[np.ndarray] = []   # per shard: first row of each row group (+ total)
        self._shard_first: list[int] = []        # per shard: its first position in the index
        ids: list[str] = []
        sizes: list[np.ndarray] = []
        owner: dict[str, str] = {}
        for s in manifest["shards"]:
            path = self.directory / s["name"]
            if not path.is_file():
                raise PipelineError(f"shard {s['name']} listed in manifest.json is missing "
                                    f"(run `lxmert-pipeline features verify {self.directory}`)", path)
            if path.stat().st_size != s["num_bytes"]:
                raise PipelineError(f"size {path.stat().st_size} bytes differs from the manifest's "
                                    f"{s['num_bytes']}: truncated or rewritten shard", path)
            meta, rows = read_shard_metadata(path)
            diff = meta.differences(self.metadata)
            if diff:
                raise PipelineError(f"shard metadata disagrees with manifest.json on {', '.join(diff)}", path)
            if rows != s["num_rows"]:
                raise PipelineError(f"{rows} rows, manifest says {s['num_rows']}", path)
            try:
                pf = pq.ParquetFile(path, memory_map=True)
                table = pf.read(columns=["image_id", "width", "height", "num_boxes"])
                groups = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            except (OSError, pa.ArrowException) as err:
                raise PipelineError(f"unreadable shard: {err}", path) from None
            shard_ids = table.column("image_id").to_pylist()
            for image_id in shard_ids:
                if image_id in owner:
                    raise PipelineError(f"image_id {image_id!r} appears in both {owner[image_id]} and "
                                        f"{s['name']}", self.directory)
                owner[image_id] = s["name"]
            self._shard_first.append(len(ids))
            self._rg_starts.append(np.concatenate([[0], np.cumsum(groups)]).astype(np.int64))
            ids.extend(shard_ids)
            sizes.append(np.stack([table.column(c).to_numpy() for c in ("width", "height", "num_boxes")], 1))
        check_checksums(self.directory, manifest["shards"], verify)
        self._ids = ids
        self._sizes = np.concatenate(sizes).astype(np.int32) if sizes else np.zeros((0, 3), np.int32)
        self._shard_of = np.repeat(np.arange(len(self._shards), dtype=np.int32),
                                   np.diff(self._shard_first + [len(ids)]).astype(np.int64))
        self._position = {image_id: i for i, image_id in enumerate(ids)}
        self._reset_process_state()

    # -- per-process state: open files, memory maps, the row-group cache ------------------
    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._files: dict[int, pq.ParquetFile] = {}
        self._maps: dict[int, _MappedShard | None] = {}
        self._cache: OrderedDict[tuple[int, int], list[ImageFeatures]] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_files", "_maps", "_cache", "_pid"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def _file(self, shard: int) -> pq.ParquetFile:
        if self._pid != os.getpid():  # forked DataLoader worker: never share file handles
            self._reset_process_state()
        pf = self._files.get(shard)
        if pf is None:
            path = self.directory / self._shards[shard]
            try:
                pf = pq.ParquetFile(path, memory_map=True)
            except (OSError, pa.ArrowException) as err:
                raise PipelineError(f"unreadable shard: {err}", path) from None
            self._files[shard] = pf
        return pf

    def _mapped(self, shard: int) -> _MappedShard | None:
        pf = self._file(shard)
        if shard in self._maps:
            return self._maps[shard]
        found = None
        if self.zero_copy:
            with open(self.directory / self._shards[shard], "rb") as fh:
                buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            blobs = blob_offsets(pf, buf, "features")
            regions = {c: list_value_regions(pf, buf, c) for c in _LIST_COLUMNS}
            first = self._shard_first[shard]
            nboxes = self._sizes[first: first + pf.metadata.num_rows, 2].astype(np.int64)
            starts = self._rg_starts[shard]
            box_start = np.zeros(len(nboxes), dtype=np.int64)
            consistent = blobs is not None and all(r is not None for r in regions.values())
            for g in range(len(starts) - 1):
                a, b = starts[g], starts[g + 1]
                counts = nboxes[a:b]
                box_start[a:b] = np.cumsum(counts) - counts
                for c, (dtype, width) in _LIST_COLUMNS.items():
                    if consistent and regions[c][g, 1] != counts.sum() * width * np.dtype(dtype).itemsize:
                        consistent = False
            found = _MappedShard(buf, blobs, regions, box_start) if consistent else None
        self._maps[shard] = found
        return found

    def _row_group(self, shard: int, group: int) -> list[ImageFeatures]:
        key = (shard, group)
        rows = self._cache.get(key)
        if rows is not None:
            self._cache.move_to_end(key)
            return rows
        try:
            table = self._file(shard).read_row_group(group)
        except (OSError, pa.ArrowException) as err:
            raise PipelineError(f"cannot decode row group {group}: {err}", self.directory / self._shards[shard]) from None
        rows = rows_from_batch(table, self.metadata)
        self._cache[key] = rows
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return rows

    def _position_of(self, image_id: str) -> int:
        try:
            return self._position[image_id]
        except KeyError:
            raise KeyError(f"image_id {image_id!r} is not in the feature store {self.directory}") from None

    def _read(self, pos: int) -> ImageFeatures:
        shard = int(self._shard_of[pos])
        row = pos - self._shard_first[shard]
        starts = self._rg_starts[shard]
        group = int(np.searchsorted(starts, row, side="right") - 1)
        mapped = self._mapped(shard)
        if mapped is None:
            return self._row_group(shard, group)[row - int(starts[group])]
        width, height, n = (int(v) for v in self._sizes[pos])
        buf, first = mapped.buf, int(mapped.box_start[row])

        def values(column: str) -> np.ndarray:
            dtype, per_box = _LIST_COLUMNS[column]
            item = np.dtype(dtype).itemsize * per_box
            offset = int(mapped.regions[column][group, 0]) + first * item
            return np.frombuffer(buf, dtype, count=n * per_box, offset=offset)

        blob_offset, blob_len = (int(v) for v in mapped.blobs[row])
        fdtype = np.dtype(self.metadata.feature_dtype).newbyteorder("<")
        if blob_len != n * self.metadata.feature_dim * fdtype.itemsize:
            raise PipelineError(f"image {self._ids[pos]!r}: feature blob has {blob_len} bytes, expected "
                                f"{n}x{self.metadata.feature_dim} {self.metadata.feature_dtype}",
                                self.directory / self._shards[shard])
        return ImageFeatures(
            image_id=self._ids[pos], width=width, height=height,
            boxes=values("boxes").reshape(n, 4),
            features=np.frombuffer(buf, fdtype, count=n * self.metadata.feature_dim,
                                   offset=blob_offset).reshape(n, self.metadata.feature_dim),
            objects_id=values("objects_id"), objects_conf=values("objects_conf"),
            attrs_id=values("attrs_id"), attrs_conf=values("attrs_conf"))

    # -- public API ---------------------------------------------------------------------
    @property
    def image_ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._position

    def get(self, image_id: str) -> ImageFeatures:
        """One image; its arrays are read-only views (copy before writing into them)."""
        return self._read(self._position_of(image_id))

    def get_many(self, image_ids: Sequence[str]) -> list[ImageFeatures]:
        """`[get(i) for i in image_ids]`; compressed shards decode each needed row group once."""
        positions = [self._position_of(i) for i in image_ids]
        order = sorted(range(len(positions)), key=positions.__getitem__)  # row-group locality
        out: list[ImageFeatures | None] = [None] * len(positions)
        for k in order:
            out[k] = self._read(positions[k])
        return out  # type: ignore[return-value]

    def iter_images(self) -> Iterator[ImageFeatures]:
        """Every image in store order."""
        for pos in range(len(self._ids)):
            yield self._read(pos)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"FeatureStore({str(self.directory)!r}, images={len(self)}, shards={len(self._shards)}, "
                f"detector={m.detector!r}, dim={m.feature_dim}, dtype={m.feature_dtype})")
