"""GQA: `<split>_{balanced,all}_questions.json`, `<split>_choices.json`, `<split>_sceneGraphs.json`."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.readers.image_ids import gqa_image_id
from pipeline.readers.records import GQAChoices, GQAQuestion, SceneGraph, SceneObject
from pipeline.errors import PipelineError
from pipeline.readers.strict_json import Where, load_json

_NUM = (int, float)


def gqa_chunk_dir(path: str | os.PathLike) -> Path:
    """GQA ships its biggest files as a folder of chunks: `train_all_questions/train_all_questions_0.json`."""
    path = Path(path)
    return path.with_name(path.stem)


def gqa_file_exists(path: str | os.PathLike) -> bool:
    return Path(path).is_file() or gqa_chunk_dir(path).is_dir()


def _load_gqa(path: str | os.PathLike) -> tuple[dict, list[Path]]:
    """The file, or the merged chunks of its folder (as the official eval.py's loadFile does)."""
    path = Path(path)
    if path.is_file() or not gqa_chunk_dir(path).is_dir():
        data = load_json(path)
        return Where(path).check(data, dict), [path]
    chunks = sorted(gqa_chunk_dir(path).glob(f"{path.stem}_*.json"),
                    key=lambda p: (len(p.name), p.name))
    if not chunks:
        raise PipelineError(f"no {path.stem}_*.json chunks in the folder", gqa_chunk_dir(path))
    merged: dict = {}
    for chunk in chunks:
        part = Where(chunk).check(load_json(chunk), dict)
        dup = next((k for k in part if k in merged), None)
        if dup is not None:
            raise PipelineError(f"{dup}: also in an earlier chunk", chunk)
        merged.update(part)
    return merged, chunks


def read_gqa_questions(path: str | os.PathLike) -> list[GQAQuestion]:
    """Questions keyed by their string id (leading zeros kept); test files have no answers."""
    data, files = _load_gqa(path)
    where = Where(path if len(files) == 1 else gqa_chunk_dir(path))
    out = []
    for qid, q in data.items():
        w = where[qid]
        w.check(q, dict)
        types = w.get(q, "types", dict, {})
        groups = w.get(q, "groups", dict, {})
        semantic = w.get(q, "semantic", list, [])
        for ws, op in w["semantic"].items(semantic):
            ws.get(op, "operation", str)
        out.append(GQAQuestion(
            question_id=str(qid), image_id=gqa_image_id(w.get(q, "imageId", str)),
            question=w.get(q, "question", str),
            answer=w.get(q, "answer", str, None), full_answer=w.get(q, "fullAnswer", str, None),
            is_balanced=w.get(q, "isBalanced", bool, True),
            types={k: v for k, v in types.items()}, groups={k: v for k, v in groups.items()},
            entailed=tuple(str(e) for e in w.get(q, "entailed", list, [])),
            equivalent=tuple(str(e) for e in w.get(q, "equivalent", list, [])),
            semantic=tuple(semantic), semantic_str=w.get(q, "semanticStr", str, None)))
    return out


def read_choices(path: str | os.PathLike) -> dict[str, GQAChoices]:
    where = Where(path)
    data = where.check(load_json(path), dict)
    out = {}
    for qid, c in data.items():
        w = where[qid]
        valid = [wv.check(v, str) for wv, v in w["valid"].items(w.get(c, "valid", list))]
        plausible = [wv.check(v, str) for wv, v in w["plausible"].items(w.get(c, "plausible", list))]
        out[str(qid)] = GQAChoices(valid=tuple(valid), plausible=tuple(plausible))
    return out


def read_scene_graphs(path: str | os.PathLike) -> dict[str, SceneGraph]:
    data, files = _load_gqa(path)
    where = Where(path if len(files) == 1 else gqa_chunk_dir(path))
    out = {}
    for image_id, g in data.items():
        w = where[image_id]
        objects = {}
        for oid, o in w.get(g, "objects", dict).items():
            wo = w["objects"][oid]
            rels = tuple((wr.get(r, "name", str), str(wr.get(r, "object", str)))
                         for wr, r in wo["relations"].items(wo.get(o, "relations", list, [])))
            objects[str(oid)] = SceneObject(
                object_id=str(oid), name=wo.get(o, "name", str), x=wo.get(o, "x", _NUM), y=wo.get(o, "y", _NUM),
                w=wo.get(o, "w", _NUM), h=wo.get(o, "h", _NUM),
                attributes=tuple(wo.get(o, "attributes", list, [])), relations=rels)
        out[gqa_image_id(image_id)] = SceneGraph(image_id=gqa_image_id(image_id), width=w.get(g, "width", int),
                                                 height=w.get(g, "height", int), objects=objects)
    return out
