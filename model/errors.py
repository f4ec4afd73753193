"""The one exception `model/` raises for checkpoints a user can fix.

`model/` must not import `pipeline`; `pipeline/commands/convert.py` (and the training
stages) turn a `CheckpointError` into `pipeline.errors.PipelineError` with the same text.
"""

from __future__ import annotations

import os


class CheckpointError(Exception):
    """A checkpoint that cannot be used as asked: `str(err)` names the file and the problem."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
