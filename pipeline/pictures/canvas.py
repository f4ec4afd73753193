"""matplotlib set up for files (no display), and an atomic PNG save."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.atomic import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    pyplot().close(figure)
    return path
