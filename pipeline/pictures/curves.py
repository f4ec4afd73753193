"""Training curves from runs' metrics.jsonl: one panel per loss, one line per run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

from pipeline.pictures.canvas import pyplot, save_figure

_NOT_LOSSES = {"step", "epoch", "lr", "examples_per_s", "split"}


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_training_curves(runs: Mapping[str, str | os.PathLike], out: str | os.PathLike, *,
                         title: str | None = None) -> Path:
    """`runs`: label -> run directory. Training losses as lines, validation values as dots."""
    series: dict[str, dict[str, tuple[list, list, list, list]]] = {}
    for label, run in runs.items():
        for record in _records(Path(run) / "metrics.jsonl"):
            val = record.get("split") == "val"
            for key, value in record.items():
                if key in _NOT_LOSSES or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                lines = series.setdefault(key, {}).setdefault(label, ([], [], [], []))
                offset = 2 if val else 0
                lines[offset].append(record["step"])
                lines[offset + 1].append(value)
    if not series:
        raise ValueError("no metrics to plot in " + ", ".join(str(r) for r in runs.values()))
    plt = pyplot()
    names = sorted(series, key=lambda k: (k != "loss", k))
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    labels = list(runs)
    for ax, name in zip(axes.flat, names):
        for label, (xs, ys, vx, vy) in series[name].items():
            colour = colours(labels.index(label) % 10)
            if xs:
                ax.plot(xs, ys, color=colour, linewidth=1.2, label=f"{label} train")
            if vx:
                ax.plot(vx, vy, "o--", color=colour, markersize=3, linewidth=0.8, label=f"{label} val")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_axis_off()
    axes.flat[0].legend(fontsize=6)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, out)
