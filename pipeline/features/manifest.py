"""manifest.json and failures.jsonl: the store-level record of what the shards hold."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable

import pyarrow.parquet as pq

from pipeline.atomic import remove_stale_temporaries, write_json
from pipeline.errors import PipelineError
from pipeline.features.schema import FORMAT_VERSION, StoreMetadata
from pipeline.features.integrity import vouched_entries, write_stamp
from pipeline.features.shard import SHARD_GLOB, ShardInfo, file_sha256, nonfinite_rows, read_shard_metadata

MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"


def load_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise PipelineError("no such feature-store directory", directory)
    if not path.is_file():
        raise PipelineError("no manifest.json: not a feature store, or its extraction has not finished "
                            "(re-run `lxmert-pipeline extract` to complete it)", directory)
    try:
        manifest = json.loads(path.read_text())
        StoreMetadata.from_dict(manifest["metadata"])
        for s in manifest["shards"]:
            s["name"], s["num_rows"], s["sha256"], s["num_bytes"]
    except (ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"malformed manifest: {type(err).__name__}: {err}", path) from None
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise PipelineError(f"store format version {manifest['format_version']} is newer than this "
                            f"lxmert-pipeline understands ({FORMAT_VERSION})", path)
    return manifest


def shard_paths(directory: str | os.PathLike) -> list[Path]:
    return sorted(Path(directory).glob(SHARD_GLOB))


def _check_metadata(path: Path, found: StoreMetadata, expected: StoreMetadata) -> None:
    diff = found.differences(expected)
    if diff:
        raise PipelineError(f"shard metadata disagrees with the store on {', '.join(diff)} "
                            f"(shard: {', '.join(f'{k}={getattr(found, k)!r}' for k in diff)}; "
                            f"store: {', '.join(f'{k}={getattr(expected, k)!r}' for k in diff)})", path)


class ShardReads:
    """Each shard's footer metadata, row count and image ids, read once per file version.

    Entries are keyed by the file's (size, mtime_ns, inode): a shard rewritten since it was
    read (an atomic replace makes a new inode) is read again. `extract` shares one between its
    skip check and `finalize_store`, so a re-run reads every complete shard's ids once."""

    def __init__(self) -> None:
        self._read: dict[str, tuple[tuple[int, int, int], StoreMetadata, int, list[str]]] = {}

    def __call__(self, path: str | os.PathLike) -> tuple[StoreMetadata, int, list[str]]:
        """(metadata, num_rows, image ids in row order) of the shard at `path`."""
        path = Path(path)
        st = path.stat()   # before reading: a file replaced meanwhile is read again next time
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        found = self._read.get(str(path))
        if found is None or found[0] != key:
            meta, rows = read_shard_metadata(path)
            found = (key, meta, rows, shard_image_ids(path))
            self._read[str(path)] = found
        return found[1], found[2], found[3]


def finalize_store(directory: str | os.PathLike, metadata: StoreMetadata,
                   shards: Iterable[ShardInfo] = (), reads: ShardReads | None = None) -> dict:
    """Validate every shard in `directory` and publish manifest.json (atomically).

    A shard's checksum comes, first match wins, from `shards` (what the writers computed),
    from the current manifest when the verification stamp vouches that the file is the one
    that hashed to it (integrity.py: same size, mtime and inode), or from hashing it here: an
    `extract` re-run hashes only the shards that changed. A duplicate image_id across shards
    is an error naming both shards. `reads` shares the shards' ids with the caller's earlier
    reads. Returns the manifest as written plus `image_ids`, the set of every stored id (read
    here anyway, so callers need not read the shards again).
    """
    directory = Path(directory)
    remove_stale_temporaries(directory)
    reads = reads or ShardReads()
    known = {s.name: s for s in shards}
    vouched = {name: ShardInfo(s["name"], s["num_rows"], s["sha256"], s["num_bytes"])
               for name, s in vouched_entries(directory).items()}
    infos: list[ShardInfo] = []
    seen: dict[str, str] = {}
    for path in shard_paths(directory):
        meta, rows, ids = reads(path)
        _check_metadata(path, meta, metadata)
        for image_id in ids:
            if image_id in seen:
                raise PipelineError(f"image_id {image_id!r} appears in both {seen[image_id]} and {path.name}", directory)
            seen[image_id] = path.name
        size = path.stat().st_size
        info = next((i for i in (known.get(path.name), vouched.get(path.name))
                     if i is not None and i.num_bytes == size and i.num_rows == rows), None)
        infos.append(info or ShardInfo(path.name, rows, file_sha256(path), size))
    manifest = {
        "format_version": FORMAT_VERSION,
        "metadata": metadata.to_dict(),
        "num_images": sum(i.num_rows for i in infos),
        "shards": [i.to_dict() for i in infos],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(directory / MANIFEST, manifest)
    write_stamp(directory, [i.name for i in infos])
    return {**manifest, "image_ids": set(seen)}


def shard_image_ids(path: str | os.PathLike) -> list[str]:
    """The image ids of one shard, in row order (one column read, memory-mapped)."""
    return pq.read_table(path, columns=["image_id"], memory_map=True).column(0).to_pylist()


def append_failures(directory: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append `{"image": ..., "reason": ...}` lines to failures.jsonl (one write call)."""
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not lines:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    with open(Path(directory) / FAILURES, "a", encoding="utf-8") as fh:
        fh.write(lines)


def read_failures(directory: str | os.PathLike) -> list[dict]:
    path = Path(directory) / FAILURES
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify_store(directory: str | os.PathLike) -> list[tuple[str, str]]:
    """Check every shard against the manifest (size, sha256, footer, rows), every image id
    against the other shards, and every row for non-finite boxes and features; returns
    [(shard name, problem)], empty if all is good. A store found good is stamped verified
    (integrity.py), so readers need not hash it again."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    expected = StoreMetadata.from_dict(manifest["metadata"])
    problems: list[tuple[str, str]] = []
    listed = {s["name"] for s in manifest["shards"]}
    owner: dict[str, str] = {}
    for s in manifest["shards"]:
        path = directory / s["name"]
        if not path.is_file():
            problems.append((s["name"], "missing"))
            continue
        size = path.stat().st_size
        if size != s["num_bytes"]:
            problems.append((s["name"], f"size {size} bytes, manifest says {s['num_bytes']} (truncated?)"))
            continue
        if file_sha256(path) != s["sha256"]:
            problems.append((s["name"], "sha256 checksum differs from the manifest (corrupted)"))
            continue
        try:
            meta, rows = read_shard_metadata(path)
            _check_metadata(path, meta, expected)
        except PipelineError as err:
            problems.append((s["name"], str(err).split(": ", 1)[-1]))
            continue
        if rows != s["num_rows"]:
            problems.append((s["name"], f"{rows} rows, manifest says {s['num_rows']}"))
            continue
        for image_id in shard_image_ids(path):
            if image_id in owner:
                problems.append((s["name"], f"image_id {image_id!r} is also in {owner[image_id]}"))
            else:
                owner[image_id] = s["name"]
        for image_id, problem in nonfinite_rows(path, meta):
            problems.append((s["name"], f"image {image_id!r}: {problem}"))
    for path in shard_paths(directory):
        if path.name not in listed:
            problems.append((path.name, "shard not listed in manifest.json"))
    if not problems:
        write_stamp(directory, sorted(listed))
    return problems
