"""What a reader of a feature store guarantees about the bytes it reads.

Opening a store (`FeatureStore`) always checks each shard's size, footer, metadata and row
count against manifest.json: cheap, and it catches truncated and swapped shards. A byte
changed inside a shard (same size) passes those checks, so by default the shard is also
hashed (sha256) and compared with the manifest, unless a verification stamp vouches that
this exact file was hashed before:

- `STORE/verified.json` records, per shard, the (size, mtime_ns, inode) of the file that
  hashed correctly, under the manifest it was checked against. A shard whose stat still
  matches is not hashed again; one that was rewritten in place (new mtime) is. Files
  modified within `RACY_NS` of the stamp are left out of it (a write in the same clock tick
  would keep the mtime), as git does with racily clean files.
- The stamp is written by the first reader that hashes (and by `features verify`), so one
  process per store pays the hash once; DDP ranks and DataLoader workers then check stats
  only. A read-only store keeps its stamp in the user's cache folder instead.
- What the stamp cannot see: a change that leaves size and mtime alone (bit rot on disk,
  or a deliberate `touch -d`). `features verify` always hashes everything.

`verify="always"` hashes every shard regardless of stamps (export-tsv, which copies what
it reads); `verify="never"` keeps only the cheap checks. The measured cost is in
docs/store.md (bench/bench_integrity.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from pipeline.atomic import write_json
from pipeline.errors import PipelineError
from pipeline.features.shard import file_sha256

VERIFIED = "verified.json"
VERIFY_MODES = ("auto", "always", "never")
RACY_NS = 2_000_000_000

# shards hashed correctly by this process (not racily new ones): (path, size, mtime_ns, inode, sha256)
_hashed_here: set[tuple] = set()


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _manifest_digest(directory: Path) -> str:
    return hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()


def _cache_stamp_path(directory: Path) -> Path:
    base = os.environ.get("LXMERT_PIPELINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lxmert-pipeline")
    key = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]
    return Path(base) / "verified" / f"{key}.json"


def _read_stamp(directory: Path, manifest_digest: str) -> dict[str, list[int]]:
    for path in (directory / VERIFIED, _cache_stamp_path(directory)):
        try:
            stamp = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(stamp, dict) and stamp.get("manifest_sha256") == manifest_digest:
            return {k: list(v) for k, v in stamp.get("shards", {}).items()}
    return {}


def write_stamp(directory: str | os.PathLike, shard_names: Iterable[str], manifest_digest: str | None = None) -> None:
    """Record that `shard_names` (as they are now on disk) hashed to the manifest's checksums."""
    directory = Path(directory)
    manifest_digest = manifest_digest or _manifest_digest(directory)
    now = time.time_ns()
    shards = {}
    for name in shard_names:
        size, mtime, ino = _stat_key(directory / name)
        if mtime < now - RACY_NS:
            shards[name] = [size, mtime, ino]
    stamp = {"manifest_sha256": manifest_digest, "shards": shards,
             "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for path in (directory / VERIFIED, _cache_stamp_path(directory)):
        try:
            write_json(path, stamp)
            return
        except OSError:
            continue  # a read-only store: try the cache folder; failing both, the next reader hashes again


def vouched_entries(directory: str | os.PathLike) -> dict[str, dict]:
    """The current manifest's shard entries ({name: entry}) whose file is, by its stat, the
    one that hashed to the entry's sha256 (the stamp, or this process, vouches for it): what
    a new manifest may carry over without hashing. Empty when there is no readable manifest."""
    directory = Path(directory)
    try:
        raw = (directory / "manifest.json").read_bytes()
        entries = json.loads(raw)["shards"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    stamp = _read_stamp(directory, hashlib.sha256(raw).hexdigest())
    found = {}
    for s in entries if isinstance(entries, list) else ():
        try:
            name, sha = s["name"], s["sha256"]
            int(s["num_rows"]), int(s["num_bytes"])
            path = directory / name
            key = _stat_key(path)
        except (OSError, KeyError, TypeError, ValueError):
            continue
        if isinstance(sha, str) and (stamp.get(name) == list(key) or (str(path.resolve()), *key, sha) in _hashed_here):
            found[name] = s
    return found


def check_checksums(directory: str | os.PathLike, shards: list[dict], verify: str = "auto") -> int:
    """Hash the manifest's `shards` as `verify` says; raise PipelineError naming the first
    shard whose sha256 differs. Returns how many shards were hashed."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
    if verify == "never":
        return 0
    directory = Path(directory)
    digest = _manifest_digest(directory)
    stamp = _read_stamp(directory, digest) if verify == "auto" else {}
    todo = []
    for s in shards:
        path = directory / s["name"]
        key = _stat_key(path)
        here = (str(path.resolve()), *key, s["sha256"])
        if verify == "always" or (stamp.get(s["name"]) != list(key) and here not in _hashed_here):
            todo.append((path, s["sha256"], here))
    if not todo:
        return 0
    # hashlib releases the GIL on large blocks: shards hash in parallel, one per core
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1, 8))) as pool:
        sums = pool.map(lambda item: file_sha256(item[0]), todo)
        for (path, expected, here), found in zip(todo, sums):
            if found != expected:
                raise PipelineError("sha256 checksum differs from manifest.json: the shard was changed or "
                                    "corrupted after it was written (re-extract it: delete it and re-run "
                                    "`lxmert-pipeline extract`)", path)
            if here[2] < time.time_ns() - RACY_NS:
                _hashed_here.add(here)
    write_stamp(directory, [s["name"] for s in shards], digest)
    return len(todo)
