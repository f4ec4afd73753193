"""An image with its saved regions drawn: box, object and attribute names, confidence."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.pictures.canvas import pyplot, save_figure


def draw_regions(image: np.ndarray, regions, object_names: Sequence[str], attribute_names: Sequence[str],
                 out: str | os.PathLike, *, top: int = 8, title: str | None = None, ax=None) -> Path | None:
    """Draw the `top` most confident regions of `regions` (an `ImageFeatures`) on `image`
    (H, W, 3 uint8). With `ax`, draws into that axes and writes nothing."""
    plt = pyplot()
    figure = None
    if ax is None:
        figure, ax = plt.subplots(figsize=(5, 5 * image.shape[0] / max(image.shape[1], 1)))
    ax.imshow(image)
    ax.set_axis_off()
    order = np.argsort(-np.asarray(regions.objects_conf))[:top]
    colours = plt.get_cmap("tab10")
    for rank, j in enumerate(order):
        x1, y1, x2, y2 = (float(v) for v in regions.boxes[j])
        colour = colours(rank % 10)
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2))
        obj = object_names[int(regions.objects_id[j])] if 0 <= regions.objects_id[j] < len(object_names) else "?"
        attr = (attribute_names[int(regions.attrs_id[j])]
                if 0 <= regions.attrs_id[j] < len(attribute_names) else "")
        ax.text(x1 + 2, y1 + 2, f"{attr} {obj} {float(regions.objects_conf[j]):.2f}".strip(), fontsize=7,
                va="top", color="white", bbox=dict(facecolor=colour, alpha=0.75, pad=1, edgecolor="none"))
    if title:
        ax.set_title(title, fontsize=8)
    return save_figure(figure, out) if figure is not None else None
