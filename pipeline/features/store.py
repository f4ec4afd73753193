"""`FeatureStore`: random and batched access to a directory of feature shards.

Memory model: the store keeps only an index (image_id -> shard, row) and a small cache of
decoded row groups. Shards are opened with memory mapping, so pages come from the OS page
cache, shared by every process that reads the same files; a DataLoader worker never holds a
copy of the store. Pickling a store (to send it to a worker process) carries the index, not
open files: each process re-opens the shards lazily.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.features.manifest import load_manifest
from pipeline.features.schema import ImageFeatures, StoreMetadata
from pipeline.features.shard import read_shard_metadata, rows_from_batch


class FeatureStore:
    def __init__(self, directory: str | os.PathLike, *, cache_row_groups: int = 4):
        self.directory = Path(directory)
        manifest = load_manifest(self.directory)
        self.metadata = StoreMetadata.from_dict(manifest["metadata"])
        self.cache_row_groups = cache_row_groups
        self._shards: list[str] = [s["name"] for s in manifest["shards"]]
        ids: list[str] = []
        shard_of: list[int] = []
        row_of: list[int] = []
        self._rg_starts: list[np.ndarray] = []   # per shard: first row of each row group (+ total)
        owner: dict[str, str] = {}
        for k, s in enumerate(manifest["shards"]):
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
                shard_ids = pf.read(columns=["image_id"]).column(0).to_pylist()
                sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
            except (OSError, pa.ArrowException) as err:
                raise PipelineError(f"unreadable shard: {err}", path) from None
            self._rg_starts.append(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            for r, image_id in enumerate(shard_ids):
                if image_id in owner:
                    raise PipelineError(f"image_id {image_id!r} appears in both {owner[image_id]} and "
                                        f"{s['name']}", self.directory)
                owner[image_id] = s["name"]
            ids.extend(shard_ids)
            shard_of.extend([k] * len(shard_ids))
            row_of.extend(range(len(shard_ids)))
        self._ids = ids
        self._shard_of = np.asarray(shard_of, dtype=np.int32)
        self._row_of = np.asarray(row_of, dtype=np.int64)
        self._position = {image_id: i for i, image_id in enumerate(ids)}
        self._reset_process_state()

    # -- per-process state: open files and the row-group cache -------------------------
    def _reset_process_state(self) -> None:
        self._pid = os.getpid()
        self._files: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[tuple[int, int], list[ImageFeatures]] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_files", "_cache", "_pid"):
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

    def _row_group(self, shard: int, group: int) -> list[ImageFeatures]:
        key = (shard, group)
        rows = self._cache.get(key)
        if rows is not None:
            self._cache.move_to_end(key)
            return rows
        pf = self._file(shard)
        try:
            table = pf.read_row_group(group)
        except (OSError, pa.ArrowException) as err:
            raise PipelineError(f"cannot decode row group {group}: {err}", self.directory / self._shards[shard]) from None
        rows = rows_from_batch(table, self.metadata)
        self._cache[key] = rows
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return rows

    def _locate(self, image_id: str) -> tuple[int, int, int]:
        try:
            pos = self._position[image_id]
        except KeyError:
            raise KeyError(f"image_id {image_id!r} is not in the feature store {self.directory}") from None
        shard, row = int(self._shard_of[pos]), int(self._row_of[pos])
        starts = self._rg_starts[shard]
        group = int(np.searchsorted(starts, row, side="right") - 1)
        return shard, group, row - int(starts[group])

    # -- public API ---------------------------------------------------------------------
    @property
    def image_ids(self) -> list[str]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._position

    def get(self, image_id: str) -> ImageFeatures:
        shard, group, offset = self._locate(image_id)
        return self._row_group(shard, group)[offset]

    def get_many(self, image_ids: Sequence[str]) -> list[ImageFeatures]:
        """Like `[get(i) for i in ids]`, decoding each needed row group once."""
        located = [self._locate(i) for i in image_ids]
        out: list[ImageFeatures | None] = [None] * len(located)
        by_group: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for k, (shard, group, offset) in enumerate(located):
            by_group.setdefault((shard, group), []).append((k, offset))
        for (shard, group), wanted in by_group.items():
            rows = self._row_group(shard, group)
            for k, offset in wanted:
                out[k] = rows[offset]
        return out  # type: ignore[return-value]

    def iter_images(self) -> Iterator[ImageFeatures]:
        """Every image in store order, one row group at a time."""
        for shard, starts in enumerate(self._rg_starts):
            for group in range(len(starts) - 1):
                yield from self._row_group(shard, group)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"FeatureStore({str(self.directory)!r}, images={len(self)}, shards={len(self._shards)}, "
                f"detector={m.detector!r}, dim={m.feature_dim}, dtype={m.feature_dtype})")
