"""COCO captions (`captions_{train2014,val2014}.json`), read through pycocotools."""

from __future__ import annotations

import contextlib
import io
import logging
import os

from pipeline.readers.image_ids import coco_image_id, image_id_from_path
from pipeline.readers.records import Caption
from pipeline.readers.strict_json import Where, load_json

log = logging.getLogger(__name__)


def _subtype_from_name(path: str | os.PathLike) -> str | None:
    stem = image_id_from_path(path)
    return stem.rsplit("_", 1)[-1] if stem.startswith("captions_") else None


def load_coco(path: str | os.PathLike):
    """A validated `pycocotools.coco.COCO` for a captions file (what COCO's own eval wants)."""
    from pycocotools.coco import COCO

    data = load_json(path)
    where = Where(path)
    where.check(data, dict)
    for w, img in where["images"].items(where.get(data, "images", list)):
        w.get(img, "id", int)
        w.get(img, "file_name", str)
    for w, ann in where["annotations"].items(where.get(data, "annotations", list)):
        w.get(ann, "id", int)
        w.get(ann, "image_id", int)
        w.get(ann, "caption", str)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    return coco


def read_captions(path: str | os.PathLike) -> list[Caption]:
    """Every caption as `Caption(image_id=<file stem>, text, "mscoco")`, in file order.

    The store id comes from `images[].file_name`; when an annotation's image is not listed
    there, from the COCO name rule with the split named in the file name.
    """
    coco = load_coco(path)
    subtype = _subtype_from_name(path)
    where = Where(path)
    captions = []
    for i, ann in enumerate(coco.dataset["annotations"]):
        img = coco.imgs.get(ann["image_id"])
        if img is not None:
            image_id = image_id_from_path(img["file_name"])
        elif subtype is not None:
            image_id = coco_image_id(ann["image_id"], subtype)
        else:
            raise where["annotations"][i]["image_id"].error(f"image {ann['image_id']} is not in images[]")
        captions.append(Caption(image_id=image_id, text=ann["caption"].strip(), source="mscoco",
                                caption_id=ann["id"]))
    return captions
