"""Atomic publication: a file or directory that exists under its final name is complete.

This is the project's one implementation of the rule (docs/files.md). `detector/` and
`model/` write plain files into a directory they are given; the pipeline publishes what
another stage reads through here:

- a file: written under a temporary name in the same directory, fsynced, `os.replace`d
  into place, the directory fsynced (`atomic_path`, `atomic_open`, `write_json`);
- a directory (a checkpoint, a tokenizer): written under a temporary name beside the final
  one, every file in it fsynced, then renamed into place (`publish_directory`).

A killed writer leaves at most a `*.tmp-*` entry behind (`remove_stale_temporaries`), never
a truncated file or a half-written directory under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

TMP_MARK = ".tmp-"


def _temporary_name(final: Path) -> Path:
    return final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(directory: Path) -> None:
    # a rename is durable only once its directory is; some filesystems refuse to open one
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it replaces `final` atomically.

    The caller writes the temporary path by any means (a library that wants a path).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(final)
    try:
        yield tmp
        _fsync_file(tmp)
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


@contextlib.contextmanager
def publish_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; on success it becomes `final`.

    An existing `final` is replaced as a whole (files the writer did not write again do
    not survive). Readers see the old directory, briefly none, or the new one, never a
    partial one: a rename cannot replace a non-empty directory, so the old one is first
    renamed to a temporary name and deleted after the new one is in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(Path(root) / name)
            _fsync_dir(Path(root))
        old = None
        if final.exists() or final.is_symlink():
            old = _temporary_name(final)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            _remove(old)
    finally:
        if tmp.exists():
            _remove(tmp)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete `*.tmp-*` leftovers of killed writers in `directory` (files and directories,
    not recursive)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if TMP_MARK in p.name]
    for p in removed:
        _remove(p)
    return removed
