"""The one exception for checkpoint and vocabulary files a user can fix, in `model/` and `detector/`.

`detector/` and `model/` may not import `pipeline` and there is no package below them, so
the class lives here and `detector.checkpoint` imports it (which loads `model`: plain torch
code). The pipeline layer catches it and raises `pipeline.errors.PipelineError(str(err))`:
the same one line, naming the file.
"""

from __future__ import annotations

import os
import re


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked: `str(err)` names the file and the problem.

    A `ValueError` (a bad file is a bad argument), so code that guards a load with
    `except ValueError` keeps working whichever package raised it.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


def refused_pickle(err: Exception) -> str | None:
    """Why `torch.load(weights_only=True)` refused a file that names code, without torch's
    advice on how to load it anyway (turning the protection off is never the fix for a
    weights file); None for other load errors (`torch_load_reason`)."""
    named = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    if named is None:
        return None
    return (f"refused: the file contains code (it calls {named.group(1)}; a weights file holds tensors "
            f"and plain values only), so it is not loaded")


def torch_load_reason(err: Exception) -> str:
    """The cause in a `torch.load` error, without the paragraphs of advice torch wraps it in."""
    text = str(err).strip()
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    first = found.group(1) if found else (text.splitlines()[0] if text else "")
    return f"{type(err).__name__}: {first[:200]}"
