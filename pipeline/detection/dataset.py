"""Visual Genome detection data: labelled boxes per image, a held-out split, and batches.

`load_detection_data(data_dir)` reads a data root's `vg/objects.json`, `vg/attributes.json`
(attributes joined by object id), `vg/image_data.json` (declared image sizes) and the two
vocabularies, and maps names to ids (labels.py). Per object: its box (VG x, y, w, h ->
x1, y1, x2, y2, clipped to the declared image), its class, and up to `max_attributes`
attribute ids (16, as grid-feats; VG objects rarely have more). Objects whose names are not
in the vocabulary, degenerate boxes, images without a file, and images left with no object
are counted in `DetectionData.stats` (and logged), never dropped silently. Images without
objects are not trained on (detectron2's FILTER_EMPTY_ANNOTATIONS).

Held-out split: an image is held out when the first 8 hex digits of sha1(image_id), read as
a fraction of 2^32, fall below `val_fraction`. It depends only on the image's own id, so it
is the same on every machine, and adding images never moves another image across splits.

`DetectionBatches` is the training loop's BatchSource: decode, resize (short side drawn from
`min_size_train` when training, `min_size` otherwise), flip with probability 1/2 when
training, zero-pad into one batch; boxes follow the image. All randomness comes from the
loop's per-batch generator, so batches are the same after a resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.detection.labels import LabelSpace
from pipeline.errors import PipelineError
from pipeline.images import ImageDecodeError, decode_image
from pipeline.readers.data_root import DataRoot
from pipeline.readers.vg import read_image_data, read_objects

log = logging.getLogger(__name__)

MAX_ATTRIBUTES = 16


@dataclass(frozen=True)
class DetectionExample:
    image_id: str
    path: str
    width: int                   # declared in image_data.json (the boxes' pixel grid)
    height: int
    boxes: np.ndarray            # (G, 4) float32 x1, y1, x2, y2 in original pixels
    classes: np.ndarray          # (G,) int64
    attributes: np.ndarray       # (G, M) int64, -1 padded (M >= 1)


@dataclass
class DetectionData:
    train: list[DetectionExample]
    val: list[DetectionExample]
    objects: LabelSpace
    attributes: LabelSpace
    stats: dict[str, Any] = field(default_factory=dict)


def held_out(image_id: str, val_fraction: float) -> bool:
    digest = hashlib.sha1(image_id.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2**32 < val_fraction


def vg_paths(data_dir: str | os.PathLike) -> dict[str, os.PathLike]:
    """The files detector training reads, each checked to exist (PipelineError naming it)."""
    root = DataRoot(data_dir)
    if not root.exists:
        raise PipelineError("data root not found", root.root)
    paths = {"objects": root.vg("objects"), "attributes": root.vg("attributes"),
             "image_data": root.vg("image_data"), "objects_vocab": root.vg_vocab("objects"),
             "attributes_vocab": root.vg_vocab("attributes")}
    for path in paths.values():
        root.require(path)
    return paths


def load_detection_data(data_dir: str | os.PathLike, *, val_fraction: float = 0.1,
                        max_attributes: int = MAX_ATTRIBUTES) -> DetectionData:
    if not 0.0 < val_fraction < 1.0:
        raise PipelineError(f"the held-out fraction must be between 0 and 1, got {val_fraction}")
    paths = vg_paths(data_dir)
    objects = LabelSpace.from_vocab(paths["objects_vocab"])
    attributes = LabelSpace.from_vocab(paths["attributes_vocab"])
    sizes = {im.image_id: (im.width, im.height) for im in read_image_data(paths["image_data"])}
    files = DataRoot(data_dir).image_files()
    stats = {"images_annotated": 0, "images_without_file": 0, "images_without_size": 0,
             "images_without_objects": 0, "objects": 0, "objects_unknown_name": 0, "boxes_degenerate": 0,
             "attributes": 0, "attributes_unknown_name": 0, "attributes_truncated": 0}
    train, val = [], []
    for image in read_objects(paths["objects"], paths["attributes"]):
        stats["images_annotated"] += 1
        if image.image_id not in files:
            stats["images_without_file"] += 1
            continue
        if image.image_id not in sizes:
            stats["images_without_size"] += 1
            continue
        W, H = sizes[image.image_id]
        boxes, classes, attrs = [], [], []
        for box in image.objects:
            stats["objects"] += 1
            cls = objects.first_known(box.names)
            if cls is None:
                stats["objects_unknown_name"] += 1
                continue
            x1, y1 = min(max(box.x, 0.0), W), min(max(box.y, 0.0), H)
            x2, y2 = min(max(box.x + box.w, 0.0), W), min(max(box.y + box.h, 0.0), H)
            if x2 - x1 < 1 or y2 - y1 < 1:
                stats["boxes_degenerate"] += 1
                continue
            ids: list[int] = []
            for name in box.attributes:
                stats["attributes"] += 1
                a = attributes.lookup(name)
                if a is None:
                    stats["attributes_unknown_name"] += 1
                elif a not in ids:          # "gray" and "grey" on one object are one label
                    ids.append(a)
            if len(ids) > max_attributes:
                stats["attributes_truncated"] += len(ids) - max_attributes
                ids = ids[:max_attributes]
            boxes.append((x1, y1, x2, y2))
            classes.append(cls)
            attrs.append(ids)
        if not boxes:
            stats["images_without_objects"] += 1
            continue
        width = max(1, max(len(a) for a in attrs))
        example = DetectionExample(
            image_id=image.image_id, path=str(files[image.image_id]), width=W, height=H,
            boxes=np.asarray(boxes, dtype=np.float32), classes=np.asarray(classes, dtype=np.int64),
            attributes=np.asarray([a + [-1] * (width - len(a)) for a in attrs], dtype=np.int64))
        (val if held_out(image.image_id, val_fraction) else train).append(example)
    if not train and not val:
        if stats["objects"] and stats["objects_unknown_name"] == stats["objects"]:
            raise PipelineError(f"none of the {stats['objects']} objects has a name in the vocabulary "
                                f"({objects.unknown_summary(5)})", paths["objects_vocab"])
        raise PipelineError(f"no image with a labelled object and an image file ({stats['images_annotated']} "
                            f"annotated images, {stats['images_without_file']} without a file under "
                            f"{DataRoot(data_dir).images_dir})", paths["objects"])
    if not val:                 # a tiny data root: hold out the one image the rule is closest to
        order = sorted(range(len(train)), key=lambda i: hashlib.sha1(train[i].image_id.encode()).hexdigest())
        val = [train.pop(order[0])]
    if not train:
        raise PipelineError(f"only {len(val)} usable image(s): nothing left to train on after holding out "
                            f"{val_fraction:.0%}", paths["objects"])
    stats.update(train_images=len(train), val_images=len(val),
                 objects_unknown=dict(objects.unknown.most_common(20)),
                 attributes_unknown=dict(attributes.unknown.most_common(20)))
    for kind, space in (("objects", objects), ("attributes", attributes)):
        if space.unknown:
            log.warning("%s: %s", kind, space.unknown_summary())
    skipped = {k: stats[k] for k in ("images_without_file", "images_without_size", "images_without_objects",
                                     "boxes_degenerate", "attributes_truncated") if stats[k]}
    if skipped:
        log.warning("detection data %s: skipped %s", data_dir, skipped)
    return DetectionData(train, val, objects, attributes, stats)


class DetectionBatches:
    """BatchSource over detection examples (see the module docstring)."""

    def __init__(self, examples: list[DetectionExample], input_cfg, train: bool):
        self.examples = examples
        self.input_cfg = input_cfg
        self.train = train

    def __len__(self) -> int:
        return len(self.examples)

    def _prepare(self, example: DetectionExample, rng: np.random.Generator):
        from detector.preprocess import prepare_image

        cfg = self.input_cfg
        if self.train:
            cfg = dataclasses.replace(cfg, min_size=int(rng.choice(cfg.min_size_train)))
            flip = bool(cfg.random_flip and rng.random() < 0.5)
        else:
            flip = False
        rgb = decode_image(example.path)
        if rgb.shape[:2] == (example.width, example.height) != (example.height, example.width):
            rgb = decode_image(example.path, upright=False)   # turned by EXIF; annotated in the stored frame
        prepared = prepare_image(rgb, cfg)
        h, w = prepared.tensor.shape[1:]
        # boxes refer to the declared size; a file of another size (it happens in VG) is
        # mapped onto it axis by axis, and detections are mapped back the same way
        sx, sy = w / example.width, h / example.height
        boxes = torch.from_numpy(example.boxes) * torch.tensor([sx, sy, sx, sy])
        image = prepared.tensor
        if flip:
            image = image.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return image, (h, w), (sx, sy), boxes

    def make_batch(self, indices: np.ndarray, rng: np.random.Generator, epoch: int) -> dict[str, Any]:
        from detector.preprocess import pad_batch

        images, sizes, scales, targets, index = [], [], [], [], []
        for i in indices:
            example = self.examples[int(i)]
            try:
                image, size, scale, boxes = self._prepare(example, rng)
            except ImageDecodeError as err:
                log.warning("skipping %s in this batch: %s", example.path, err)
                continue
            images.append(image)
            sizes.append(size)
            scales.append(scale)
            index.append(int(i))
            targets.append({"boxes": boxes.float(), "classes": torch.from_numpy(example.classes),
                            "attributes": torch.from_numpy(example.attributes)})
        if not images:
            raise PipelineError(f"no image of this batch could be decoded (first: {self.examples[int(indices[0])].path})")
        batch, _ = pad_batch(images)
        return {"images": batch, "image_sizes": torch.tensor(sizes, dtype=torch.int64),
                "scales": torch.tensor(scales, dtype=torch.float64),      # (N, 2) input / declared, x and y
                "targets": targets, "index": torch.tensor(index, dtype=torch.int64)}
