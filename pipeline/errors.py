"""The one exception type the CLI turns into a single line on stderr.

Raise `PipelineError` for anything a user can fix (a bad file, a missing key, a
mismatched store). The message must name the file and the problem; the CLI prints it
as one line and exits 1, and shows the traceback only with `--debug`.
"""

from __future__ import annotations

import os


class PipelineError(Exception):
    """A user-facing failure: `str(err)` is the whole message."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UsageError(PipelineError):
    """Arguments that do not fit together; the CLI exits 2 as for argparse errors."""
