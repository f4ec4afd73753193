"""Atomic file publication: a file that exists under its final name is complete.

Every writer in the project (feature shards, manifests, checkpoints, results) writes to
a temporary name in the same directory, fsyncs, then `os.replace`s it into place, so a
killed process leaves at most a `*.tmp-*` file behind, never a truncated final file.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

TMP_MARK = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it replaces `final` atomically.

    The caller writes the temporary path by any means (a library that wants a path).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(final: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """`open()` for writing that publishes the file only when the block succeeds."""
    if "r" in mode or "a" in mode:
        raise ValueError("atomic_open is for writing whole files")
    with atomic_path(final) as tmp:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent, sort_keys=False)
        fh.write("\n")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete `*.tmp-*` leftovers of killed writers in `directory` (not recursive)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if TMP_MARK in p.name and p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed
