"""One writer per store folder: `STORE/.lock`, held with `fcntl.flock` for a whole run.

Two runs writing one store would each skip, write and count shards the other is changing
(and one would delete the other's temporaries). The lock is an advisory `flock` on an open
file, so the kernel releases it when the holder exits for any reason (a crash or SIGKILL
leaves no stale lock to clean up); the file itself stays and only says who held it last
(host, pid, command, start time), for the refusal message. `flock` is per host on some
network filesystems: two hosts writing one store over NFS are not excluded there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError

LOCK = ".lock"


class StoreBusy(PipelineError):
    """Another run holds the store's lock (the folder is theirs: leave it as it is)."""


@contextlib.contextmanager
def store_lock(directory: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold `directory/.lock` for the block, or raise PipelineError naming the holder."""
    path = Path(directory) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreBusy(f"another run is writing this store ({_holder(fd)}); wait for it to "
                                f"finish or choose another output folder", directory) from None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (f"{record['command']} started {record['since']} by pid {record['pid']} on host "
                f"{record['host']}")
    except (ValueError, KeyError, OSError):
        return "holder unknown"
