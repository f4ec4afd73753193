"""Visual Genome json files: image data, objects, attributes, relationships, region
descriptions, question answers, and the detector label vocabularies (`*_vocab.txt`)."""

from __future__ import annotations

import os

from pipeline.errors import PipelineError
from pipeline.readers.image_ids import vg_image_id
from pipeline.readers.records import Box, Caption, ImageObjects, QAItem, Relationship, VGImage
from pipeline.readers.strict_json import Where, load_json

_NUM = (int, float)


def _image_id(w: Where, entry: dict) -> str:
    # region_descriptions / question_answers use "id", the other files "image_id"
    key = "image_id" if "image_id" in entry else "id"
    return vg_image_id(w.get(entry, key, int))


def read_image_data(path: str | os.PathLike) -> list[VGImage]:
    where = Where(path)
    out = []
    for w, e in where.items(load_json(path)):
        out.append(VGImage(image_id=_image_id(w, e), width=w.get(e, "width", int),
                           height=w.get(e, "height", int), url=w.get(e, "url", str, None, nullable=True),
                           coco_id=w.get(e, "coco_id", int, None, nullable=True)))
    return out


def _box(w: Where, o: dict, with_attributes: bool) -> Box:
    names = w.get(o, "names", list, None)
    if names is None:  # some VG versions have a single "name"
        names = [w.get(o, "name", str)]
    attrs = w.get(o, "attributes", list, []) if with_attributes else []
    return Box(object_id=w.get(o, "object_id", int), x=w.get(o, "x", _NUM), y=w.get(o, "y", _NUM),
               w=w.get(o, "w", _NUM), h=w.get(o, "h", _NUM),
               names=tuple(str(n).strip().lower() for n in names),
               attributes=tuple(str(a).strip().lower() for a in attrs))


def read_objects(path: str | os.PathLike, attributes_path: str | os.PathLike | None = None) -> list[ImageObjects]:
    """Boxes of `objects.json`; with `attributes.json`, each box also gets its attributes
    (matched by object id, as the bottom-up-attention training data does)."""
    where = Where(path)
    images = []
    for w, e in where.items(load_json(path)):
        boxes = [_box(wo, o, False) for wo, o in w["objects"].items(w.get(e, "objects", list))]
        images.append(ImageObjects(image_id=_image_id(w, e), objects=tuple(boxes)))
    if attributes_path is None:
        return images
    attrs: dict[int, tuple[str, ...]] = {}
    awhere = Where(attributes_path)
    for w, e in awhere.items(load_json(attributes_path)):
        for wo, o in w["attributes"].items(w.get(e, "attributes", list)):
            attrs[wo.get(o, "object_id", int)] = _box(wo, o, True).attributes
    return [ImageObjects(image_id=im.image_id, width=im.width, height=im.height,
                         objects=tuple(Box(b.object_id, b.x, b.y, b.w, b.h, b.names, attrs.get(b.object_id, ()))
                                       for b in im.objects))
            for im in images]


def read_attributes(path: str | os.PathLike) -> list[ImageObjects]:
    where = Where(path)
    out = []
    for w, e in where.items(load_json(path)):
        boxes = [_box(wo, o, True) for wo, o in w["attributes"].items(w.get(e, "attributes", list))]
        out.append(ImageObjects(image_id=_image_id(w, e), objects=tuple(boxes)))
    return out


def read_relationships(path: str | os.PathLike) -> list[Relationship]:
    where = Where(path)
    out = []
    for w, e in where.items(load_json(path)):
        image_id = _image_id(w, e)
        for wr, r in w["relationships"].items(w.get(e, "relationships", list)):
            subj = wr.get(r, "subject", dict)
            obj = wr.get(r, "object", dict)
            out.append(Relationship(image_id=image_id, relationship_id=wr.get(r, "relationship_id", int),
                                    predicate=wr.get(r, "predicate", str).strip().lower(),
                                    subject_id=wr["subject"].get(subj, "object_id", int),
                                    object_id=wr["object"].get(obj, "object_id", int)))
    return out


def read_region_descriptions(path: str | os.PathLike) -> list[Caption]:
    """Region phrases as captions of their image (`source="vg"`), with the region box."""
    where = Where(path)
    out = []
    for w, e in where.items(load_json(path)):
        image_id = _image_id(w, e)
        for wr, r in w["regions"].items(w.get(e, "regions", list)):
            box = (wr.get(r, "x", _NUM), wr.get(r, "y", _NUM), wr.get(r, "width", _NUM), wr.get(r, "height", _NUM))
            out.append(Caption(image_id=image_id, text=wr.get(r, "phrase", str).strip(), source="vg",
                               caption_id=wr.get(r, "region_id", int), box=box))
    return out


def read_question_answers(path: str | os.PathLike) -> list[QAItem]:
    where = Where(path)
    out = []
    for w, e in where.items(load_json(path)):
        image_id = _image_id(w, e)
        for wq, q in w["qas"].items(w.get(e, "qas", list)):
            out.append(QAItem(question_id=wq.get(q, "qa_id", int), image_id=image_id,
                              question=wq.get(q, "question", str).strip(),
                              answer=wq.get(q, "answer", str).strip(), source="vg"))
    return out


def read_vocab(path: str | os.PathLike) -> list[list[str]]:
    """A detector vocabulary: line k is class k, comma-separated synonyms (first = display name)."""
    if not os.path.isfile(path):
        raise PipelineError("file not found", path)
    classes = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            names = [n.strip() for n in line.rstrip("\n").split(",") if n.strip()]
            if not names:
                raise PipelineError(f"line {lineno}: empty class name", path)
            classes.append(names)
    if not classes:
        raise PipelineError("empty vocabulary", path)
    return classes
