"""Detector configuration: plain dataclasses, presets, YAML round trip.

Field names echo the detectron2 config keys they stand for (MODEL.RESNETS.*, MODEL.RPN.*,
MODEL.ROI_HEADS.*, INPUT.*) so a reader of the bottom-up-attention yaml files finds them.
The constants of `vg-r101-c4` are those of docs/reference/detector.md §1 (AIR/HF detectron2 port of
the Caffe model with `RPN.POST_NMS_TOPK_TEST = 300`, Caffe max-pool, res5 stride 1 dilation 2).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
CAFFE_PIXEL_MEAN = (102.9801, 115.9465, 122.7717)  # BGR, 0-255 (Caffe PIXEL_MEANS)


@dataclass
class InputConfig:
    min_size: int = 600            # short side after resizing (Caffe TEST.SCALES)
    max_size: int = 1000           # long side cap (Caffe TEST.MAX_SIZE)
    pixel_mean: tuple[float, float, float] = CAFFE_PIXEL_MEAN   # BGR order
    format: str = "BGR"            # channel order the weights expect
    # training only: short side drawn per image from these (detectron2 MIN_SIZE_TRAIN, "choice");
    # Caffe trained VG at the single scale 600 with flipped copies of every image
    min_size_train: tuple[int, ...] = (600,)
    random_flip: bool = True       # horizontal flip with probability 1/2


@dataclass
class ResNetConfig:
    stem_out_channels: int = 64
    res2_out_channels: int = 256   # doubles each stage: res4 = 4x, res5 (= feature dim) = 8x
    width_per_group: int = 64      # bottleneck width of res2, doubles each stage
    blocks: tuple[int, int, int] = (3, 4, 23)   # res2, res3, res4
    res5_blocks: int = 3
    res5_dilation: int = 2         # Caffe res5: stride 1, 3x3 convs dilated by 2
    stride_in_1x1: bool = True     # Caffe puts the stride in the 1x1 conv
    caffe_maxpool: bool = True     # pool1: kernel 3, stride 2, pad 0, ceil mode
    norm: str = "FrozenBN"         # "FrozenBN" | "BN" (both load the same keys)
    freeze_at: int = 2             # training: stem (1) and res2 (2) get no gradients

    @property
    def res4_channels(self) -> int:
        return self.res2_out_channels * 4

    @property
    def res5_channels(self) -> int:
        return self.res2_out_channels * 8


@dataclass
class RPNConfig:
    hidden_channels: int = 512
    anchor_sizes: tuple[float, ...] = (64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)   # h / w, detectron2 order (size-major)
    anchor_stride: int = 16
    anchor_offset: float = 0.0
    bbox_reg_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    nms_thresh: float = 0.7
    min_box_size: float = 0.0      # D2/AIR MIN_SIZE 0 (Caffe drops sides < 16*scale)
    pre_nms_topk_test: int = 6000
    post_nms_topk_test: int = 300
    pre_nms_topk_train: int = 12000
    post_nms_topk_train: int = 2000
    # training-time sampling (exposed for detector training, unused by extraction)
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    iou_thresholds: tuple[float, float] = (0.3, 0.7)
    smooth_l1_beta: float = 0.0    # detectron2 default (L1); Caffe used sigma 3, i.e. beta 1/9

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.aspect_ratios)


@dataclass
class ROIHeadsConfig:
    num_classes: int = 1600        # background is the extra, last logit
    num_attributes: int = 400      # "no attribute" is the extra, last logit
    pooler_resolution: int = 14
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    attr_embed_dim: int = 256
    attr_hidden_dim: int = 512
    # training-time sampling (exposed for detector training)
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5
    smooth_l1_beta: float = 0.0    # detectron2 default (L1); Caffe used beta 1
    attr_loss_weight: float = 0.5  # Caffe / BUA
    # box evaluation (detectron2 MODEL.ROI_HEADS.SCORE_THRESH_TEST etc.; extraction uses `selection`)
    score_thresh_test: float = 0.05
    nms_thresh_test: float = 0.5
    detections_per_image: int = 100


@dataclass
class SelectionConfig:
    """Which boxes are saved per image (docs/reference/detector.md §4); see detector/selection.py."""
    method: str = "caffe"          # "caffe" (LXMERT reference) | "max_class" (AIR maxnms / HF)
    score_thresh: float = 0.2
    nms_thresh: float = 0.3        # caffe: per-class NMS on the proposals
    min_boxes: int = 36
    max_boxes: int = 36
    max_class_nms_thresholds: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

    def validate(self) -> None:
        if self.method not in ("caffe", "max_class"):
            raise ValueError(f"selection method must be 'caffe' or 'max_class', not {self.method!r}")
        if not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {self.min_boxes}/{self.max_boxes}")


@dataclass
class DetectorConfig:
    name: str = "vg-r101-c4"
    input: InputConfig = field(default_factory=InputConfig)
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    # label names (one class per line, synonyms after commas); None: the shipped VG vocab
    objects_vocab: str | None = None
    attributes_vocab: str | None = None

    @property
    def feature_dim(self) -> int:
        return self.resnet.res5_channels

    @property
    def backbone_stride(self) -> int:
        return 16

    # -- plain dict / YAML -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DetectorConfig":
        return _from_dict(cls, data, "detector config")

    def to_yaml(self, path: str | os.PathLike) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "DetectorConfig":
        import yaml

        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a detector config must be a mapping")
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def replace(self, **sections: Any) -> "DetectorConfig":
        """Copy with some sections or fields replaced (sections as dicts merge field-wise)."""
        data = self.to_dict()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        return DetectorConfig.from_dict(data)

    def with_vocab(self, objects_vocab: str | os.PathLike,
                   attributes_vocab: str | os.PathLike | None = None) -> "DetectorConfig":
        """Label space taken from vocab files (e.g. a data root's vg/objects_vocab.txt)."""
        num_classes = len(read_vocab(objects_vocab))
        changes: dict[str, Any] = {"objects_vocab": str(objects_vocab),
                                   "roi_heads": {"num_classes": num_classes}}
        if attributes_vocab is not None:
            changes["attributes_vocab"] = str(attributes_vocab)
            changes["roi_heads"]["num_attributes"] = len(read_vocab(attributes_vocab))
        return self.replace(**changes)

    def object_names(self) -> list[str]:
        return [n.split(",")[0] for n in read_vocab(self.objects_vocab or VOCAB_DIR / "objects_vocab.txt")]

    def attribute_names(self) -> list[str]:
        return [n.split(",")[0] for n in read_vocab(self.attributes_vocab or VOCAB_DIR / "attributes_vocab.txt")]


def read_vocab(path: str | os.PathLike) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        names = [line.strip() for line in fh.read().splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{path}: empty vocabulary")
    return names


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(fields)})")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
            else fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            if isinstance(value, (int, float)):
                value = [value]
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _tiny() -> DetectorConfig:
    """A narrow ResNet C4 detector with the same graph: well under a second per image on a CPU."""
    return DetectorConfig(
        name="tiny",
        input=InputConfig(min_size=256, max_size=416),
        resnet=ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=8,
                            blocks=(1, 1, 1), res5_blocks=1, norm="BN"),
        rpn=RPNConfig(hidden_channels=64, anchor_sizes=(32, 64, 128, 256),
                      pre_nms_topk_test=1000, post_nms_topk_test=100,
                      pre_nms_topk_train=2000, post_nms_topk_train=500),
        roi_heads=ROIHeadsConfig(pooler_resolution=7, attr_embed_dim=32, attr_hidden_dim=64,
                                 batch_size_per_image=128),
        selection=SelectionConfig(min_boxes=10, max_boxes=36),
    )


def _small() -> DetectorConfig:
    """Between tiny and the real model: R-50-like depth at quarter width, 600/1000 input."""
    return DetectorConfig(
        name="small",
        resnet=ResNetConfig(stem_out_channels=32, res2_out_channels=64, width_per_group=16,
                            blocks=(2, 2, 3), res5_blocks=2, norm="BN"),
        rpn=RPNConfig(hidden_channels=128, pre_nms_topk_test=3000, post_nms_topk_test=150),
        roi_heads=ROIHeadsConfig(attr_embed_dim=64, attr_hidden_dim=128),
    )


def _synth() -> DetectorConfig:
    """A small C4 detector for the synthetic world, trained from scratch on a CPU in minutes.

    Input: objects there are 13-36% of the short side, 37-104 pixels at a 288-pixel short
    side, which anchors of 32/64/128 cover (224 pixels learnt the shapes more slowly per
    image than the extra backbone cost). The training short side is the test one: the
    world's size attribute is relative to the short side, so scale jitter would blur it.
    Network: `tiny`'s widths with twice the bottleneck width and two blocks per stage (shapes
    are learnt several times faster per image for ~10% more compute), 5x5 RoIPool (objects
    span 2-6 res4 cells; a 7x7 grid only repeats them at twice the res5 cost). Nothing is
    frozen: there are no pretrained weights to keep. Training samples: 64 anchors and 32 RoIs
    per image, half positive, RoIs positive from IoU 0.6, smooth-L1 with beta 1 (Caffe's) on
    their boxes. res5 over the RoIs is most of a step and a scene has at most six objects;
    the cleaner positives and gentler box gradients let the shared features learn the shapes
    sooner. Attribute loss weight 1.0, not Caffe's 0.5: at 0.5 the saved features leave most
    of an object's colour out, and half the world's questions ask for one; a higher weight
    costs shape.
    Test: 50 proposals (more only add false positives on scenes of at most six objects).
    Saved regions: 6 per image, the most confident. The reference keeps 36 for Visual Genome
    images, which are annotated with ~35 objects each; a synthetic scene has at most six, and
    a demo-size LXMERT finds the region a word names among 6 far sooner than among 10.
    Measurements behind each choice: research/2026-11-26-synth-detector-preset.md and
    research/2026-11-27-region-features-colour.md.
    """
    return DetectorConfig(
        name="synth",
        input=InputConfig(min_size=288, max_size=480, min_size_train=(288,)),
        resnet=ResNetConfig(stem_out_channels=16, res2_out_channels=32, width_per_group=16,
                            blocks=(2, 2, 2), res5_blocks=1, norm="BN", freeze_at=0),
        rpn=RPNConfig(hidden_channels=64, anchor_sizes=(32, 64, 128),
                      pre_nms_topk_test=1000, post_nms_topk_test=50,
                      pre_nms_topk_train=1000, post_nms_topk_train=300,
                      batch_size_per_image=64),
        roi_heads=ROIHeadsConfig(pooler_resolution=5, attr_embed_dim=32, attr_hidden_dim=64,
                                 batch_size_per_image=32, positive_fraction=0.5, iou_threshold=0.6,
                                 smooth_l1_beta=1.0, attr_loss_weight=1.0),
        selection=SelectionConfig(min_boxes=6, max_boxes=6),
    )


PRESETS = {
    "vg-r101-c4": DetectorConfig,
    "tiny": _tiny,
    "small": _small,
    "synth": _synth,
}


def preset(name: str) -> DetectorConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown detector preset {name!r}; known: {', '.join(PRESETS)}") from None


def anchor_clamp() -> float:
    """detectron2's clamp on dw/dh before exp (log(1000/16))."""
    return math.log(1000.0 / 16)
