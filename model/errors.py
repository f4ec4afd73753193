"""The one exception for checkpoint and vocabulary files a user can fix, in `model/` and `detector/`.

`detector/` and `model/` may not import `pipeline` and there is no package below them, so
the class lives here and `detector.checkpoint` imports it (which loads `model`: plain torch
code). The pipeline layer catches it and raises `pipeline.errors.PipelineError(str(err))`:
the same one line, naming the file.
"""

from __future__ import annotations

import os


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked: `str(err)` names the file and the problem.

    A `ValueError` (a bad file is a bad argument), so code that guards a load with
    `except ValueError` keeps working whichever package raised it.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
