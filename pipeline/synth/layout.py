"""Which images the synthetic world has, their names, and which dataset split each serves.

Every image serves exactly one split of one dataset family, so train / val / test images
are disjoint everywhere:

| group | file names | annotations |
|---|---|---|
| coco_train2014 / coco_val2014 | `COCO_{split}_{id:012d}.jpg` | COCO captions, VQA v2 |
| vg | `{id}.jpg` | Visual Genome only (detector training, VG captions and QA) |
| gqa_train / gqa_val | `{id}.jpg` (Visual Genome ids) | Visual Genome **and** GQA, as in reality |
| gqa_testdev | `n{id}.jpg` | GQA only (held out of Visual Genome, so the detector never sees it) |
| nlvr2_{train,dev,test1} | `{split}-{set}-{pair}-img{0,1}.png` | NLVR2 |

Visual Genome ids never coincide with COCO images here (`coco_id` is null): a simplification
of the real overlap, which keeps every image in exactly one split.
"""

from __future__ import annotations

# NLVR2 dev is large (480 statements of a 6000-image world) because the demo's table compares
# models on it: at 240 a 7-point difference still had a 95% interval reaching below zero
# (research/2026-11-27-nlvr2-truncated-statements.md)
SHARES = (("coco_train2014", 0.26), ("coco_val2014", 0.08), ("vg", 0.12), ("gqa_train", 0.16),
          ("gqa_val", 0.04), ("gqa_testdev", 0.04), ("nlvr2_train", 0.20), ("nlvr2_dev", 0.08),
          ("nlvr2_test1", 0.02))
NLVR2_PAIRS_PER_SET = 4          # = 2 ** NLVR2_SENTENCES_PER_SET: every label combination once
NLVR2_SENTENCES_PER_SET = 2
IMAGES_PER_NLVR2_SET = 2 * NLVR2_PAIRS_PER_SET
MIN_IMAGES = 60


def allocate(total: int) -> dict[str, int]:
    """Images per group; NLVR2 groups get whole sets (8 images), every group at least one unit."""
    if total < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} images for every split to have some")
    counts = {}
    for name, share in SHARES:
        n = total * share
        if name.startswith("nlvr2"):
            counts[name] = max(1, round(n / IMAGES_PER_NLVR2_SET)) * IMAGES_PER_NLVR2_SET
        else:
            counts[name] = max(2, int(n))
    # give the rounding remainder to COCO train (or take the excess from it)
    counts["coco_train2014"] += total - sum(counts.values())
    return counts
