"""`DataRoot`: where every annotation file of a data root lives (the real downloads' names).

    images/                      every image, named as its dataset names it (see image_ids.py)
    vg/{image_data,objects,attributes,relationships,region_descriptions,question_answers}.json
    vg/{objects,attributes}_vocab.txt
    coco/annotations/captions_{train2014,val2014}.json
    vqa/v2_OpenEnded_mscoco_{split}_questions.json, vqa/v2_mscoco_{split}_annotations.json
    gqa/{split}_balanced_questions.json, {split}_all_questions.json, {split}_choices.json,
        {split}_sceneGraphs.json          (split: train, val, testdev)
    nlvr2/{train,dev,test1}.json
    lxmert/...                   LXMERT's preprocessed json, when converted or downloaded
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.readers.image_ids import image_id_from_path

VG_FILES = ("image_data", "objects", "attributes", "relationships", "region_descriptions", "question_answers")
VG_VOCABS = ("objects", "attributes")
COCO_SPLITS = ("train2014", "val2014")
VQA_SPLITS = ("train2014", "val2014")
GQA_SPLITS = ("train", "val", "testdev")
NLVR2_SPLITS = ("train", "dev", "test1")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ExpectedFile:
    dataset: str      # vg | coco | vqa | gqa | nlvr2
    split: str | None
    role: str         # e.g. "questions", "annotations", "objects"
    path: Path


class DataRoot:
    def __init__(self, directory: str | os.PathLike):
        self.root = Path(directory)
        self._images: dict[str, Path] | None = None

    def __repr__(self) -> str:
        return f"DataRoot({str(self.root)!r})"

    @property
    def exists(self) -> bool:
        return self.root.is_dir()

    # --- paths ---
    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def vg(self, name: str) -> Path:
        if name not in VG_FILES:
            raise ValueError(f"unknown Visual Genome file {name!r}; one of {', '.join(VG_FILES)}")
        return self.root / "vg" / f"{name}.json"

    def vg_vocab(self, kind: str) -> Path:
        if kind not in VG_VOCABS:
            raise ValueError(f"unknown vocabulary {kind!r}; objects or attributes")
        return self.root / "vg" / f"{kind}_vocab.txt"

    def coco_captions(self, split: str) -> Path:
        return self.root / "coco" / "annotations" / f"captions_{split}.json"

    def vqa_questions(self, split: str) -> Path:
        return self.root / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json"

    def vqa_annotations(self, split: str) -> Path:
        return self.root / "vqa" / f"v2_mscoco_{split}_annotations.json"

    def gqa_questions(self, split: str, balanced: bool = True) -> Path:
        return self.root / "gqa" / f"{split}_{'balanced' if balanced else 'all'}_questions.json"

    def gqa_choices(self, split: str) -> Path:
        return self.root / "gqa" / f"{split}_choices.json"

    def gqa_scene_graphs(self, split: str) -> Path:
        return self.root / "gqa" / f"{split}_sceneGraphs.json"

    def nlvr2(self, split: str) -> Path:
        return self.root / "nlvr2" / f"{split}.json"

    def lxmert(self, name: str) -> Path:
        """LXMERT preprocessed json: `lxmert("mscoco_train")`, `lxmert("vqa/train")`."""
        return self.root / "lxmert" / f"{name}.json"

    # --- what should be there ---
    def expected_files(self) -> list[ExpectedFile]:
        files = [ExpectedFile("vg", None, name, self.vg(name)) for name in VG_FILES]
        files += [ExpectedFile("vg", None, f"{k}_vocab", self.vg_vocab(k)) for k in VG_VOCABS]
        files += [ExpectedFile("coco", s, "captions", self.coco_captions(s)) for s in COCO_SPLITS]
        for s in VQA_SPLITS:
            files += [ExpectedFile("vqa", s, "questions", self.vqa_questions(s)),
                      ExpectedFile("vqa", s, "annotations", self.vqa_annotations(s))]
        for s in GQA_SPLITS:
            files += [ExpectedFile("gqa", s, "balanced_questions", self.gqa_questions(s)),
                      ExpectedFile("gqa", s, "all_questions", self.gqa_questions(s, balanced=False)),
                      ExpectedFile("gqa", s, "choices", self.gqa_choices(s)),
                      ExpectedFile("gqa", s, "sceneGraphs", self.gqa_scene_graphs(s))]
        files += [ExpectedFile("nlvr2", s, "examples", self.nlvr2(s)) for s in NLVR2_SPLITS]
        return files

    def missing(self) -> list[ExpectedFile]:
        # GQA's large files may come as a folder of chunks (train_all_questions/..._0.json)
        return [f for f in self.expected_files()
                if not (f.path.is_file() or (f.dataset == "gqa" and f.path.with_name(f.path.stem).is_dir()))]

    def require(self, path: Path) -> Path:
        """`path`, or a PipelineError saying which expected file of this root is missing."""
        if not path.is_file():
            raise PipelineError(f"missing from data root {self.root}", path)
        return path

    # --- images ---
    def image_files(self) -> dict[str, Path]:
        """store image_id -> file, for every image under `images/` (recursive, cached)."""
        if self._images is None:
            found: dict[str, Path] = {}
            if self.images_dir.is_dir():
                for p in sorted(self.images_dir.rglob("*")):
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                        image_id = image_id_from_path(p)
                        if image_id in found:
                            raise PipelineError(f"two images have the store id {image_id!r}: {found[image_id]}", p)
                        found[image_id] = p
            self._images = found
        return self._images

    def image_path(self, image_id: str) -> Path:
        path = self.image_files().get(image_id)
        if path is None:
            raise PipelineError(f"no image file for image_id {image_id!r}", self.images_dir)
        return path
