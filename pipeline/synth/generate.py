"""Build a whole synthetic data root: sample scenes, render them in a process pool, then
write every annotation file in the real datasets' formats (see layout.py for the splits)."""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_open, write_json
from pipeline.readers.data_root import DataRoot
from pipeline.synth.balance import AnswerBalancer
from pipeline.synth.captions import captions, region_phrases
from pipeline.synth.gqa_questions import families
from pipeline.synth.language import annotator_answers
from pipeline.synth.layout import IMAGES_PER_NLVR2_SET, NLVR2_PAIRS_PER_SET, NLVR2_SENTENCES_PER_SET, allocate
from pipeline.synth.nlvr2_statements import sample_statement
from pipeline.synth.render import render_to_file
from pipeline.synth.vqa_questions import ask
from pipeline.synth.world import (COLOR_SYNONYMS, SHAPES, SIZE_SYNONYMS, Scene, WorldConfig, relation,
                                  sample_scene)

log = logging.getLogger(__name__)

GRAYSCALE_FRACTION = 0.03
VQA_QUESTIONS_PER_IMAGE = 5
VG_QA_PER_IMAGE = 3
GQA_FAMILIES_PER_IMAGE = 3
_INFO = {"description": "lxmert-pipeline synthetic world", "version": "1.0", "year": 2014,
         "contributor": "lxmert-pipeline synth", "url": "https://example.invalid/synth"}
_LICENSE = {"id": 1, "name": "CC0 (synthetic)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}


@dataclass
class SynthImage:
    group: str
    image_id: str              # the store id = file stem
    file_name: str
    number: int | None         # COCO / VG integer id
    scene: Scene
    boxes: list | None = None  # tight boxes, after rendering


def _streams(seed: int, names: list[str]) -> dict[str, np.random.Generator]:
    """One independent generator per part, so adding a part never changes another's output."""
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children)}


def _scene(rng, cfg: WorldConfig, focus=None) -> Scene:
    return sample_scene(rng, cfg, grayscale=rng.random() < GRAYSCALE_FRACTION, focus=focus)


def plan_images(counts: dict[str, int], cfg: WorldConfig, rng: np.random.Generator):
    """All images with their scenes, and the NLVR2 sets (statement + pairs with labels)."""
    images: list[SynthImage] = []
    coco_ids = rng.choice(np.arange(1, 600_000), size=counts["coco_train2014"] + counts["coco_val2014"],
                          replace=False)
    k = 0
    for split in ("train2014", "val2014"):
        for _ in range(counts[f"coco_{split}"]):
            cid = int(coco_ids[k]); k += 1
            name = f"COCO_{split}_{cid:012d}"
            images.append(SynthImage(f"coco_{split}", name, name + ".jpg", cid, _scene(rng, cfg)))
    vg_next = int(rng.integers(1, 1000))
    for group in ("vg", "gqa_train", "gqa_val"):
        for _ in range(counts[group]):
            vg_next += int(rng.integers(1, 4))
            images.append(SynthImage(group, str(vg_next), f"{vg_next}.jpg", vg_next, _scene(rng, cfg)))
    testdev_ids = rng.choice(np.arange(100_000, 1_000_000), size=counts["gqa_testdev"], replace=False)
    for t in testdev_ids:
        name = f"n{int(t)}"
        images.append(SynthImage("gqa_testdev", name, name + ".jpg", None, _scene(rng, cfg)))

    nlvr2_sets = []
    for split in ("train", "dev", "test1"):
        set_id = int(rng.integers(0, 5000))
        for _ in range(counts[f"nlvr2_{split}"] // IMAGES_PER_NLVR2_SET):
            set_id += int(rng.integers(1, 4))
            statements = [sample_statement(rng, cfg) for _ in range(NLVR2_SENTENCES_PER_SET)]
            focus = _merged_focus([s.focus for s in statements])
            # every sentence true for half the pairs: the pairs take the label combinations in
            # turn, scenes resampled until they agree (each combination is likely enough)
            combos = [tuple(bool((k >> j) & 1) for j in range(len(statements)))
                      for k in range(NLVR2_PAIRS_PER_SET)]
            combos = [combos[i] for i in rng.permutation(len(combos))]
            pairs = []
            for pair, wanted in enumerate(combos):
                for _attempt in range(300):
                    left, right = _scene(rng, cfg, focus), _scene(rng, cfg, focus)
                    labels = tuple(s.holds(left, right) for s in statements)
                    if labels == wanted:
                        break
                prefix = f"{split}-{set_id}-{pair}"
                for side, scene in (("img0", left), ("img1", right)):
                    images.append(SynthImage(f"nlvr2_{split}", f"{prefix}-{side}", f"{prefix}-{side}.png", None, scene))
                pairs.append((pair, labels))
            nlvr2_sets.append((split, set_id, statements, pairs))
    return images, nlvr2_sets


def _merged_focus(focuses: list[dict]) -> dict:
    shapes = [s for f in focuses for s in (f.get("shapes") or ([f["shape"]] if f.get("shape") else []))]
    colors = [f["color"] for f in focuses if f.get("color")]
    out = {"shapes": shapes, "p": max(f.get("p", 0.3) for f in focuses)}
    if colors:
        out["color"] = colors[0]
    return out


def render_all(images: list[SynthImage], directory: Path, workers: int | None) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [(im.scene, str(directory / im.file_name)) for im in images]
    start = time.perf_counter()
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    if workers <= 1 or len(jobs) < 64:
        results = [render_to_file(j) for j in jobs]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(render_to_file, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    for im, boxes in zip(images, results):
        im.boxes = boxes
    return time.perf_counter() - start


class _Ids:
    """Counters for annotation ids (object, region, caption, QA, GQA question ids)."""

    def __init__(self, rng: np.random.Generator):
        self.next = {k: int(rng.integers(1000, 100_000)) for k in ("object", "relationship", "region", "caption", "qa", "gqa")}

    def take(self, kind: str) -> int:
        self.next[kind] += 1
        return self.next[kind]


def write_vocabularies(root: DataRoot, cfg: WorldConfig) -> None:
    with atomic_open(root.vg_vocab("objects"), encoding="utf-8") as fh:
        for s in cfg.shapes:
            fh.write(",".join([s] + SHAPES[s]) + "\n")
    with atomic_open(root.vg_vocab("attributes"), encoding="utf-8") as fh:
        for a in cfg.attributes:
            fh.write(",".join([a] + COLOR_SYNONYMS.get(a, []) + SIZE_SYNONYMS.get(a, [])) + "\n")


def _vg_object(oid: int, obj, box) -> dict:
    x1, y1, x2, y2 = box
    return {"object_id": oid, "x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1, "names": [obj.shape],
            "synsets": [f"{obj.shape}.n.01"]}


def write_visual_genome(root: DataRoot, images: list[SynthImage], cfg: WorldConfig, rng, ids: _Ids,
                        object_ids: dict[str, list[int]]) -> None:
    vg_images = [im for im in images if im.group in ("vg", "gqa_train", "gqa_val")]
    image_data, objects, attributes, relationships, regions, qas = [], [], [], [], [], []
    balancer = AnswerBalancer()
    for im in vg_images:
        s = im.scene
        oids = object_ids[im.image_id]
        image_data.append({"width": s.width, "height": s.height, "image_id": im.number,
                           "url": f"https://example.invalid/VG_100K/{im.file_name}", "coco_id": None, "flickr_id": None})
        objs = [_vg_object(oid, o, b) for oid, o, b in zip(oids, s.objects, im.boxes)]
        objects.append({"image_id": im.number, "objects": objs})
        attributes.append({"image_id": im.number, "attributes": [dict(d, attributes=list(o.attributes))
                                                                 for d, o in zip(objs, s.objects)]})
        rels = []
        for i, a in enumerate(s.objects):
            for j, b in enumerate(s.objects):
                for word in relation(a, b):
                    if word in ("to the left of", "above"):   # VG states each fact once
                        rels.append({"relationship_id": ids.take("relationship"),
                                     "predicate": word.replace("to the ", ""), "synsets": [],
                                     "subject": objs[i], "object": objs[j]})
        relationships.append({"image_id": im.number, "relationships": rels})
        regions.append({"id": im.number, "regions": [
            {"region_id": ids.take("region"), "image_id": im.number, "phrase": p, "x": x, "y": y, "width": w, "height": h}
            for p, x, y, w, h in region_phrases(s, im.boxes, rng)]})
        qas.append({"id": im.number, "qas": [
            {"qa_id": ids.take("qa"), "image_id": im.number, "question": q.question,
             "answer": q.answer.capitalize() + ".", "q_objects": [], "a_objects": []}
            for q in ask(rng, s, cfg, balancer, VG_QA_PER_IMAGE)]})
    for name, data in (("image_data", image_data), ("objects", objects), ("attributes", attributes),
                       ("relationships", relationships), ("region_descriptions", regions),
                       ("question_answers", qas)):
        write_json(root.vg(name), data, indent=None)


def write_coco_and_vqa(root: DataRoot, images: list[SynthImage], cfg: WorldConfig, rng, ids: _Ids) -> None:
    balancer = AnswerBalancer()
    for split in ("train2014", "val2014"):
        ims = [im for im in images if im.group == f"coco_{split}"]
        caps = {"info": _INFO, "licenses": [_LICENSE], "images": [], "annotations": []}
        questions, annotations = [], []
        for im in ims:
            s = im.scene
            caps["images"].append({"license": 1, "file_name": im.file_name, "id": im.number, "width": s.width,
                                   "height": s.height, "date_captured": "2013-11-14 16:28:13",
                                   "coco_url": f"https://example.invalid/{split}/{im.file_name}", "flickr_url": ""})
            for text in captions(s, rng):
                caps["annotations"].append({"image_id": im.number, "id": ids.take("caption"), "caption": text})
            for k, q in enumerate(ask(rng, s, cfg, balancer, VQA_QUESTIONS_PER_IMAGE)):
                qid = im.number * 1000 + k
                answers = annotator_answers(rng, q.answer, q.answer_type, list(q.wrong))
                questions.append({"image_id": im.number, "question": q.question, "question_id": qid})
                annotations.append({
                    "question_type": q.question_type, "multiple_choice_answer": q.answer,
                    "answers": [{"answer": a, "answer_confidence": "yes" if a == q.answer else "maybe",
                                 "answer_id": i + 1} for i, a in enumerate(answers)],
                    "image_id": im.number, "answer_type": q.answer_type, "question_id": qid})
        write_json(root.coco_captions(split), caps, indent=None)
        header = {"info": _INFO, "license": _LICENSE, "data_type": "mscoco", "data_subtype": split}
        write_json(root.vqa_questions(split), dict(header, task_type="Open-Ended", questions=questions), indent=None)
        write_json(root.vqa_annotations(split), dict(header, annotations=annotations), indent=None)


def _grounding(question: str, program: list[dict]) -> dict:
    """`annotations.question`: token index -> object id for each selected object."""
    tokens = [t.strip("?,.") for t in question.split()]
    out = {}
    for op in program:
        if op["operation"] == "select" and "(" in op["argument"]:
            name, oid = op["argument"].rsplit(" (", 1)
            if name in tokens:
                out[str(tokens.index(name))] = oid.rstrip(")")
    return out


def write_gqa(root: DataRoot, images: list[SynthImage], cfg: WorldConfig, rng, ids: _Ids,
              object_ids: dict[str, list[int]]) -> None:
    balancer = AnswerBalancer()
    for split in ("train", "val", "testdev"):
        ims = [im for im in images if im.group == f"gqa_{split}"]
        all_q, choices, graphs = {}, {}, {}
        for im in ims:
            s = im.scene
            oids = [str(o) for o in object_ids[im.image_id]]
            graphs[im.image_id] = {"width": s.width, "height": s.height, "objects": {
                oid: {"name": o.shape, "x": b[0], "y": b[1], "w": b[2] - b[0], "h": b[3] - b[1],
                      "attributes": list(o.attributes),
                      "relations": [{"name": word, "object": oids[j]} for j, other in enumerate(s.objects)
                                    for word in relation(o, other)]}
                for oid, o, b in zip(oids, s.objects, im.boxes)}}
            for fam in families(rng, s, oids, cfg, balancer, GQA_FAMILIES_PER_IMAGE):
                for item in fam:
                    item.question_id = f"{ids.take('gqa'):08d}"
                for item in fam:
                    semantic_str = "->".join(f"{op['operation']}: {op['argument']}"
                                             + (f" {op['dependencies']}" if op["dependencies"] else "")
                                             for op in item.program)
                    all_q[item.question_id] = {
                        "semantic": item.program, "entailed": [fam[j].question_id for j in item.entails],
                        "equivalent": [item.question_id], "question": item.question, "imageId": im.image_id,
                        "isBalanced": item.balanced, "groups": {"global": item.group_global, "local": item.group_local},
                        "answer": item.answer, "semanticStr": semantic_str,
                        "annotations": {"answer": {}, "question": _grounding(item.question, item.program),
                                        "fullAnswer": {}},
                        "types": {"structural": item.structural, "semantic": item.semantic_type,
                                  "detailed": item.detailed},
                        "fullAnswer": item.full_answer}
                    choices[item.question_id] = {"valid": item.valid, "plausible": item.plausible}
        balanced = {k: v for k, v in all_q.items() if v["isBalanced"]}
        write_json(root.gqa_questions(split, balanced=False), all_q, indent=None)
        write_json(root.gqa_questions(split), balanced, indent=None)
        write_json(root.gqa_choices(split), choices, indent=None)
        write_json(root.gqa_scene_graphs(split), graphs, indent=None)


def write_nlvr2(root: DataRoot, nlvr2_sets) -> None:
    by_split = collections.defaultdict(list)
    for split, set_id, statements, pairs in nlvr2_sets:
        for sentence_id, statement in enumerate(statements):
            for pair, labels in pairs:
                prefix = f"{split}-{set_id}-{pair}"
                by_split[split].append({
                    "identifier": f"{prefix}-{sentence_id}", "sentence": statement.sentence,
                    "label": str(labels[sentence_id]),
                    "left_url": f"https://example.invalid/nlvr2/{prefix}-img0.png",
                    "right_url": f"https://example.invalid/nlvr2/{prefix}-img1.png",
                    "writer": "synth", "synset": statement.template, "query": statement.template})
    for split in ("train", "dev", "test1"):
        with atomic_open(root.nlvr2(split), encoding="utf-8") as fh:
            for row in by_split[split]:
                fh.write(json.dumps(row) + "\n")


def _remove_stale_images(root: DataRoot, keep: set[str]) -> None:
    """A world rewritten in place with fewer images must not keep the old ones."""
    stale = [p for p in root.images_dir.iterdir() if p.is_file() and p.name not in keep]
    for p in stale:
        p.unlink()
    if stale:
        log.info("removed %d images of an earlier world from %s", len(stale), root.images_dir)


def generate(out: str | os.PathLike, images: int = 1000, seed: int = 0, cfg: WorldConfig | None = None,
             workers: int | None = None) -> dict:
    """Write a synthetic data root to `out`; returns a summary (counts, timings)."""
    cfg = cfg or WorldConfig()
    root = DataRoot(out)
    root.root.mkdir(parents=True, exist_ok=True)
    rngs = _streams(seed, ["plan", "ids", "vg", "coco", "gqa"])
    t0 = time.perf_counter()
    counts = allocate(images)
    planned, nlvr2_sets = plan_images(counts, cfg, rngs["plan"])
    t_plan = time.perf_counter() - t0
    t_render = render_all(planned, root.images_dir, workers)
    _remove_stale_images(root, {im.file_name for im in planned})
    t1 = time.perf_counter()
    ids = _Ids(rngs["ids"])
    object_ids = {im.image_id: [ids.take("object") for _ in im.scene.objects] for im in planned}
    write_vocabularies(root, cfg)
    write_visual_genome(root, planned, cfg, rngs["vg"], ids, object_ids)
    write_coco_and_vqa(root, planned, cfg, rngs["coco"], ids)
    write_gqa(root, planned, cfg, rngs["gqa"], ids, object_ids)
    write_nlvr2(root, nlvr2_sets)
    t_write = time.perf_counter() - t1
    summary = {"images": len(planned), "groups": counts, "seed": seed,
               "grayscale_images": sum(im.scene.grayscale for im in planned),
               "shapes": list(cfg.shapes), "attributes": list(cfg.attributes),
               "seconds": {"plan": round(t_plan, 2), "render": round(t_render, 2), "annotations": round(t_write, 2)}}
    return summary
