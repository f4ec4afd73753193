"""The README written into a synthetic data root."""

from __future__ import annotations

from pipeline.synth.layout import NLVR2_PAIRS_PER_SET, NLVR2_SENTENCES_PER_SET
from pipeline.synth.layout import __doc__ as LAYOUT_DOC

_TEXT = """# Synthetic vision-and-language world

Written by `lxmert-pipeline synth` (seed {seed}, {images} images). Every file has the format of
the real dataset it imitates, so the same readers, the official evaluation scripts and
pycocotools read it. Scenes are shapes on a plain background: {num_shapes} object classes
({shapes}) and {num_attributes} attributes ({attributes}). Boxes in `vg/objects.json` are the
tight boxes of the drawn shapes; {grayscale} images are grayscale (drawn in white, black and
gray only, so their colour annotations stay true).

## Files
- `images/`: every image, named as its dataset names them (JPEG; NLVR2 pairs are PNG).
- `vg/`: image_data, objects, attributes, relationships, region_descriptions,
  question_answers (.json) and the detector label vocabularies objects_vocab.txt /
  attributes_vocab.txt (line k = class k, comma-separated synonyms).
- `coco/annotations/captions_{{train2014,val2014}}.json`: 5 captions per image.
- `vqa/`: v2 questions and annotations for train2014 / val2014, 10 answers per question.
- `gqa/`: {{train,val,testdev}}_{{balanced,all}}_questions.json, _choices.json, _sceneGraphs.json.
  Entailed questions are determined by the same fact as the question that lists them.
- `nlvr2/`: train/dev/test1 .json (JSON lines); {sentences} sentences per set, each
  with the set's {pairs} image pairs, true for about half of them.

## Splits
{layout}
## Question-only baselines (majority answer per exact question, trained on train)
{baselines}

## Counts
{counts}
"""


def render_readme(summary: dict) -> str:
    b = summary.get("baselines", {})
    lines = []
    if "vqa" in b:
        lines.append(f"- VQA {b['vqa']['split']}: {b['vqa']['question_only']:.2f} VQA accuracy "
                     f"(per question type: {b['vqa']['question_type_majority']:.2f}; ceiling {b['vqa']['ceiling']:.2f})")
    if "gqa" in b:
        lines.append(f"- GQA {b['gqa']['split']}: {b['gqa']['question_only']:.2f} accuracy "
                     f"(per detailed type: {b['gqa']['question_type_majority']:.2f})")
    if "nlvr2" in b:
        lines.append(f"- NLVR2 {b['nlvr2']['split']}: {b['nlvr2']['question_only']:.2f} accuracy, "
                     f"{b['nlvr2']['consistency']:.2f} consistency")
    layout = "\n".join(LAYOUT_DOC.strip().splitlines()[1:])
    return _TEXT.format(seed=summary["seed"], images=summary["images"], num_shapes=len(summary["shapes"]),
                        shapes=", ".join(summary["shapes"]), num_attributes=len(summary["attributes"]),
                        attributes=", ".join(summary["attributes"]), grayscale=summary["grayscale_images"],
                        pairs=NLVR2_PAIRS_PER_SET, sentences=NLVR2_SENTENCES_PER_SET, layout=layout,
                        baselines="\n".join(lines) or "- not measured",
                        counts="\n".join(f"- {k}: {v} images" for k, v in summary["groups"].items()))
