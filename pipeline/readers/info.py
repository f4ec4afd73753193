"""`data info`: which datasets and splits a data root holds, with counts, and what is missing."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from pipeline.readers.gqa import gqa_file_exists
from pipeline.readers.image_ids import nlvr2_group
from pipeline.readers.data_root import COCO_SPLITS, GQA_SPLITS, NLVR2_SPLITS, VQA_SPLITS, DataRoot


@dataclass
class SplitInfo:
    dataset: str
    split: str | None
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def collect_info(root: DataRoot) -> list[SplitInfo]:
    """Reads every present file with its reader (so a malformed one fails here, with its path)."""
    from pipeline.readers import coco, gqa, nlvr2, vg, vqa

    out: list[SplitInfo] = []
    missing = collections.defaultdict(list)
    for f in root.missing():
        missing[(f.dataset, f.split)].append(str(f.path.relative_to(root.root)))

    images = root.image_files()
    if images:
        exts = collections.Counter(p.suffix.lower() for p in images.values())
        out.append(SplitInfo("images", None, {"files": len(images), **{f"{e[1:]}": n for e, n in sorted(exts.items())}}))

    info = SplitInfo("vg", None, missing=missing[("vg", None)])
    if root.vg("image_data").is_file():
        info.counts["images"] = len(vg.read_image_data(root.vg("image_data")))
    if root.vg("objects").is_file():
        info.counts["objects"] = sum(len(i.objects) for i in vg.read_objects(root.vg("objects")))
    if root.vg("relationships").is_file():
        info.counts["relationships"] = len(vg.read_relationships(root.vg("relationships")))
    if root.vg("region_descriptions").is_file():
        info.counts["regions"] = len(vg.read_region_descriptions(root.vg("region_descriptions")))
    if root.vg("question_answers").is_file():
        info.counts["qa"] = len(vg.read_question_answers(root.vg("question_answers")))
    for kind in ("objects", "attributes"):
        if root.vg_vocab(kind).is_file():
            info.counts[f"{kind}_classes"] = len(vg.read_vocab(root.vg_vocab(kind)))
    out.append(info)

    for split in COCO_SPLITS:
        info = SplitInfo("coco", split, missing=missing[("coco", split)])
        if root.coco_captions(split).is_file():
            caps = coco.read_captions(root.coco_captions(split))
            info.counts = {"images": len({c.image_id for c in caps}), "captions": len(caps)}
        out.append(info)
    for split in VQA_SPLITS:
        info = SplitInfo("vqa", split, missing=missing[("vqa", split)])
        if root.vqa_questions(split).is_file():
            ann = root.vqa_annotations(split)
            qs = vqa.read_vqa(root.vqa_questions(split), ann if ann.is_file() else None)
            info.counts = {"images": len({q.image_id for q in qs}), "questions": len(qs),
                           "annotated": sum(1 for q in qs if q.answers)}
        out.append(info)
    for split in GQA_SPLITS:
        info = SplitInfo("gqa", split, missing=missing[("gqa", split)])
        if gqa_file_exists(root.gqa_questions(split)):
            qs = gqa.read_gqa_questions(root.gqa_questions(split))
            info.counts = {"images": len({q.image_id for q in qs}), "balanced_questions": len(qs)}
        if gqa_file_exists(root.gqa_questions(split, balanced=False)):
            info.counts["all_questions"] = len(gqa.read_gqa_questions(root.gqa_questions(split, balanced=False)))
        if gqa_file_exists(root.gqa_scene_graphs(split)):
            info.counts["scene_graphs"] = len(gqa.read_scene_graphs(root.gqa_scene_graphs(split)))
        out.append(info)
    for split in NLVR2_SPLITS:
        info = SplitInfo("nlvr2", split, missing=missing[("nlvr2", split)])
        if root.nlvr2(split).is_file():
            ex = nlvr2.read_nlvr2(root.nlvr2(split))
            info.counts = {"examples": len(ex), "sentences": len({nlvr2_group(e.identifier) for e in ex}),
                           "images": len({i for e in ex for i in (e.left_image_id, e.right_image_id)})}
        out.append(info)
    return out


def format_info(root: DataRoot, infos: list[SplitInfo]) -> str:
    lines = [f"data root {root.root}"]
    for i in infos:
        name = i.dataset if i.split is None else f"{i.dataset}/{i.split}"
        if i.counts:
            counts = ", ".join(f"{k} {v:,}" for k, v in i.counts.items())
            lines.append(f"  {name:<18} {counts}")
        elif i.dataset != "images":
            lines.append(f"  {name:<18} not found")
        if i.missing and i.counts:
            lines.append(f"  {'':<18} missing: {', '.join(i.missing)}")
    total_missing = sum(len(i.missing) for i in infos)
    lines.append(f"{total_missing} expected file(s) missing" if total_missing else "all expected files present")
    return "\n".join(lines)
