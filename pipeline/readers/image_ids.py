"""The one rule that maps every dataset's image ids to feature-store `image_id`s.

A feature store is keyed by the **file stem** of each image (the file name without its
extension), because extraction only sees files. Each dataset names its images differently,
so each reader converts its annotation ids with the function here:

| dataset | annotation id | image file | store `image_id` |
|---|---|---|---|
| COCO captions | `images[].file_name` (`image_id` int) | `COCO_train2014_000000000042.jpg` | `COCO_train2014_000000000042` |
| VQA v2 | `image_id` int + the file's `data_subtype` (`train2014`) | same COCO file | `COCO_train2014_000000000042` |
| Visual Genome | `image_id` int | `42.jpg` | `"42"` |
| GQA | `imageId` string (`"2375429"`, `"n161313"`) | `2375429.jpg` | `"2375429"` (unchanged) |
| NLVR2 | `identifier` `split-set-pair-sentence` | `dev-850-2-img0.png` | `dev-850-2-img0` / `-img1` |
| LXMERT json | `img_id` / `img0` / `img1` | - | unchanged (LXMERT already uses stems) |

GQA image ids are Visual Genome ids, so a GQA image and the VG image with the same id share
one store entry, as in LXMERT's `vg_gqa_obj36.tsv`.
"""

from __future__ import annotations

import os
import re

from pipeline.errors import PipelineError

_NLVR2_IDENTIFIER = re.compile(r"^(?P<split>[^-]+)-(?P<set>[^-]+)-(?P<pair>[^-]+)-(?P<sentence>[^-]+)$")


def image_id_from_path(path: str | os.PathLike) -> str:
    """The store id of an image file: its stem (`images/COCO_val2014_000000000042.jpg` -> stem)."""
    name = os.path.basename(os.fspath(path))
    stem, dot, _ = name.rpartition(".")
    return stem if dot else name


def coco_image_id(image_id: int, subtype: str) -> str:
    """`(42, "train2014")` -> `COCO_train2014_000000000042` (the COCO 2014 file name rule)."""
    return f"COCO_{subtype}_{int(image_id):012d}"


def parse_coco_image_id(store_id: str) -> tuple[str, int]:
    """Inverse of `coco_image_id`: `COCO_val2014_000000000042` -> `("val2014", 42)`."""
    match = re.fullmatch(r"COCO_([a-z]+\d{4})_(\d+)", store_id)
    if not match:
        raise ValueError(f"not a COCO image id: {store_id!r}")
    return match.group(1), int(match.group(2))


def vg_image_id(image_id: int) -> str:
    return str(int(image_id))


def gqa_image_id(image_id: str) -> str:
    return str(image_id)


def nlvr2_image_ids(identifier: str, path: str | os.PathLike | None = None) -> tuple[str, str]:
    """`dev-850-2-0` -> `("dev-850-2-img0", "dev-850-2-img1")`, as NLVR2 names its image files."""
    match = _NLVR2_IDENTIFIER.match(identifier)
    if not match:
        raise PipelineError(f"NLVR2 identifier {identifier!r} is not split-set-pair-sentence", path)
    prefix = f"{match['split']}-{match['set']}-{match['pair']}"
    return f"{prefix}-img0", f"{prefix}-img1"


def nlvr2_group(identifier: str) -> str:
    """The consistency group of the official metrics.py: the identifier with the pair id blanked."""
    parts = identifier.split("-")
    parts[2] = ""
    return "-".join(parts)
