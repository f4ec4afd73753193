"""Pretraining entries in LXMERT's format, built from the official files of a data root.

LXMERT's preprocessed `mscoco_train.json` / `vgnococo.json` (docs/reference/lxmert.md §1.5) hold,
per image, sentences by source (`sentf`) and, for QA sources, one answer->score dict per
sentence (`labelf`). This builds the same entries from the files the datasets ship:

- COCO images (`coco_entries`): `mscoco` captions, `vqa` questions with their soft scores,
  and the `vg` region phrases of the Visual Genome image showing the same COCO image (`coco_id`).
- Visual Genome images not in COCO (`vg_entries`, LXMERT's "vgnococo"): `vg` region phrases,
  `gqa` questions of the given GQA splits (label `{answer: 1.0}`), and `vgqa` Visual Genome QA
  (label `{convert_ans(answer): 1.0}`).

Answers are kept as given (VQA keys normalised); LXMERT drops those outside its answer table
at load time, which `AnswerVocab.for_pretraining` + `AnswerVocab.target` reproduce.
"""

from __future__ import annotations

import collections
import logging

from pipeline.readers.answers import convert_ans
from pipeline.readers.data_root import DataRoot
from pipeline.readers.image_ids import coco_image_id
from pipeline.readers.records import PretrainEntry

log = logging.getLogger(__name__)


def _vg_phrases_by_image(root: DataRoot) -> dict[str, list[str]]:
    from pipeline.readers.vg import read_region_descriptions

    out: dict[str, list[str]] = collections.defaultdict(list)
    if root.vg("region_descriptions").is_file():
        for c in read_region_descriptions(root.vg("region_descriptions")):
            out[c.image_id].append(c.text)
    return out


def coco_entries(root: DataRoot, split: str = "train2014", with_vqa: bool = True,
                 with_vg: bool = True) -> list[PretrainEntry]:
    from pipeline.readers.coco import read_captions
    from pipeline.readers.vg import read_image_data
    from pipeline.readers.vqa import read_vqa

    sentf: dict[str, dict[str, list[str]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    labelf: dict[str, dict[str, list[dict]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for c in read_captions(root.require(root.coco_captions(split))):
        sentf[c.image_id]["mscoco"].append(c.text)
    if with_vqa and root.vqa_questions(split).is_file():
        ann = root.vqa_annotations(split)
        skipped = 0
        for q in read_vqa(root.vqa_questions(split), ann if ann.is_file() else None):
            if q.image_id in sentf and q.scores:
                sentf[q.image_id]["vqa"].append(q.question)
                labelf[q.image_id]["vqa"].append(dict(q.scores))
            else:
                skipped += 1
        if skipped:
            log.info("%s: %d VQA questions skipped (no answers, or image without COCO captions)",
                     root.vqa_questions(split), skipped)
    if with_vg and root.vg("image_data").is_file():
        phrases = _vg_phrases_by_image(root)
        for im in read_image_data(root.vg("image_data")):
            if im.coco_id is not None:
                cid = coco_image_id(im.coco_id, split)
                if cid in sentf:
                    sentf[cid]["vg"].extend(phrases.get(im.image_id, []))
    return [PretrainEntry(image_id=i, sentf={k: list(v) for k, v in s.items() if v},
                          labelf={k: list(v) for k, v in labelf[i].items()}) for i, s in sentf.items()]


def vg_entries(root: DataRoot, gqa_splits: tuple[str, ...] = ("train",), with_vgqa: bool = True,
               exclude: set[str] | None = None) -> list[PretrainEntry]:
    """Visual Genome images without a COCO id (and not in `exclude`, e.g. held-out images)."""
    from pipeline.readers.gqa import read_gqa_questions
    from pipeline.readers.vg import read_image_data, read_question_answers

    exclude = exclude or set()
    keep = [im.image_id for im in read_image_data(root.require(root.vg("image_data")))
            if im.coco_id is None and im.image_id not in exclude]
    keep_set = set(keep)
    sentf: dict[str, dict[str, list[str]]] = {i: collections.defaultdict(list) for i in keep}
    labelf: dict[str, dict[str, list[dict]]] = {i: collections.defaultdict(list) for i in keep}
    for image_id, texts in _vg_phrases_by_image(root).items():
        if image_id in keep_set:
            sentf[image_id]["vg"].extend(texts)
    for split in gqa_splits:
        skipped = 0
        for q in read_gqa_questions(root.require(root.gqa_questions(split))):
            if q.image_id in keep_set and q.answer is not None:
                sentf[q.image_id]["gqa"].append(q.question)
                labelf[q.image_id]["gqa"].append({q.answer: 1.0})
            else:
                skipped += 1
        if skipped:
            log.info("%s: %d questions skipped (no answer, or image excluded / not in Visual Genome)",
                     root.gqa_questions(split), skipped)
    if with_vgqa and root.vg("question_answers").is_file():
        for qa in read_question_answers(root.vg("question_answers")):
            if qa.image_id in keep_set:
                sentf[qa.image_id]["vgqa"].append(qa.question)
                labelf[qa.image_id]["vgqa"].append({convert_ans(qa.answer): 1.0})
    entries = [PretrainEntry(image_id=i, sentf={k: v for k, v in sentf[i].items() if v},
                             labelf={k: v for k, v in labelf[i].items() if v})
               for i in keep if any(sentf[i].values())]
    if len(entries) < len(keep):
        log.info("%d Visual Genome images have no sentence and are left out", len(keep) - len(entries))
    return entries


def pretrain_entries(root: DataRoot, split: str = "train") -> list[PretrainEntry]:
    """LXMERT's pretraining splits on a data root: `train` = COCO train2014 + Visual Genome
    not in COCO (GQA train questions); `valid` = COCO val2014 (LXMERT's minival is a subset)."""
    if split == "train":
        gqa_val = set()
        if root.gqa_questions("val", balanced=False).is_file():
            from pipeline.readers.gqa import read_gqa_questions
            gqa_val = {q.image_id for q in read_gqa_questions(root.gqa_questions("val", balanced=False))}
        return coco_entries(root, "train2014") + vg_entries(root, ("train",), exclude=gqa_val)
    if split == "valid":
        return coco_entries(root, "val2014")
    raise ValueError(f"unknown pretraining split {split!r}; train or valid")
