"""The VG Faster R-CNN (`backbone`, `proposal_generator`, `roi_heads`) and region extraction.

`GeneralizedRCNN.extract` is the bottom-up-attention test-time path on a padded batch:
backbone -> RPN proposals -> RoIPool + res5 + mean -> class/box/attribute predictors ->
box selection (detector/selection.py) -> boxes back in original pixels. The pieces are
ordinary modules so detector training can call them with its own losses:
`backbone(x, image_sizes)["res4"]`, `proposal_generator.predict(...)` (per-image logits,
deltas, anchors), `proposal_generator.find_top_proposals(..., training=True)`,
`roi_heads.box_features(res4, boxes)`, `roi_heads.box_predictor(x)` and
`roi_heads.box_predictor.attribute_logits(x, class_ids)`.

Training: `model(images, image_sizes, targets)` returns the loss dict (RPN, Fast R-CNN,
attributes), detectron2's contract, so a DistributedDataParallel wrapper sees one forward.
`detect` gives the scored detections box mAP is measured on.

Precision: under `autocast_dtype` the convolutions (backbone, RPN conv, res5) run in
bf16/fp16; RoIPool, anchors, box decoding, NMS, softmax and selection stay in float32 (in
bf16 the proposal boxes move by pixels and the selected set changes, docs/reference/detector.md §5).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detector.backbone import Conv2d, ResNet, fold_norm_into_conv
from detector.boxes import clip_boxes
from detector.config import DetectorConfig, SelectionConfig
from detector.inference import Detections
from detector.proposal_generator import RPN
from detector.roi_heads import Res5ROIHeads
from detector.selection import select_boxes


@dataclass
class Regions:
    """One image's saved regions, boxes in original pixels. Ids exclude background/no-attribute."""
    boxes: torch.Tensor          # (K, 4) float32 x1, y1, x2, y2
    features: torch.Tensor       # (K, D) float32
    objects_id: torch.Tensor     # (K,) int64
    objects_conf: torch.Tensor   # (K,) float32
    attrs_id: torch.Tensor       # (K,) int64
    attrs_conf: torch.Tensor     # (K,) float32
    num_proposals: int = 0


class _PartTimer:
    """Accumulates wall time per part into a dict (synchronising CUDA first); off when None."""

    def __init__(self, sink: dict[str, float] | None, device: torch.device):
        self.sink, self.cuda = sink, device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, part: str):
        if self.sink is None:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.sink[part] = self.sink.get(part, 0.0) + time.perf_counter() - t0


class GeneralizedRCNN(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(cfg.resnet)
        self.proposal_generator = RPN(cfg.rpn, self.backbone.out_channels)
        self.roi_heads = Res5ROIHeads(cfg.roi_heads, cfg.resnet, cfg.backbone_stride)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def fold_norms_(self) -> "GeneralizedRCNN":
        """Inference only: fold every norm into its conv (fewer passes over the feature maps).
        The state_dict no longer matches the checkpoint layout afterwards."""
        if self.training:
            raise RuntimeError("fold_norms_ is for eval-mode inference")
        for module in self.modules():
            if isinstance(module, Conv2d):
                fold_norm_into_conv(module)
        return self

    def forward(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Training losses of a padded batch. images (N, 3, H, W) as prepare_image makes them;
        image_sizes: each image's own (h, w); targets per image: {"boxes" (G, 4) x1y1x2y2 in
        input pixels, "classes" (G,) int64 in [0, C), "attributes" (G, M) int64 in [0, A),
        -1 padded}. -> {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_attr"}."""
        image_sizes = [(int(h), int(w)) for h, w in image_sizes]
        res4 = self.backbone(images, image_sizes)["res4"]
        rpn_out = self.proposal_generator.predict(res4, self.backbone.feature_sizes(image_sizes))
        losses = self.proposal_generator.losses(rpn_out, [t["boxes"] for t in targets])
        proposals, _ = self.proposal_generator.find_top_proposals(rpn_out, image_sizes, training=True)
        losses.update(self.roi_heads.losses(res4, proposals, targets))
        return losses

    @torch.no_grad()
    def detect(self, images: torch.Tensor, image_sizes: list[tuple[int, int]], scales: list[float],
               original_sizes: list[tuple[int, int]]) -> list[Detections]:
        """Detections per image in original pixels (test-time proposals, per-class NMS)."""
        image_sizes = [(int(h), int(w)) for h, w in image_sizes]
        res4 = self.backbone(images, image_sizes)["res4"]
        rpn_out = self.proposal_generator.predict(res4, self.backbone.feature_sizes(image_sizes))
        proposals, _ = self.proposal_generator.find_top_proposals(rpn_out, image_sizes)
        found = self.roi_heads.detect(res4, proposals, image_sizes)
        return [d.scaled(s, *orig) for d, s, orig in zip(found, scales, original_sizes)]

    @torch.no_grad()
    def classify_boxes(self, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                       boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Given boxes (input pixels, per image) -> (class probs (R, C+1), attribute probs (R, A+1)),
        the attribute head fed the argmax class over all C+1 logits as at extraction (AIR's
        given-box mode)."""
        image_sizes = [(int(h), int(w)) for h, w in image_sizes]
        res4 = self.backbone(images, image_sizes)["res4"]
        feats = self.roi_heads.box_features(res4, boxes)
        class_logits, _ = self.roi_heads.box_predictor(feats)
        attr_logits = self.roi_heads.box_predictor.attribute_logits(feats, class_logits.argmax(dim=1))
        return F.softmax(class_logits.float(), dim=1), F.softmax(attr_logits.float(), dim=1)

    def extract(self, images: torch.Tensor, image_sizes: list[tuple[int, int]], scales: list[float],
                original_sizes: list[tuple[int, int]], selection: SelectionConfig | None = None,
                autocast_dtype: torch.dtype | None = None,
                timings: dict[str, float] | None = None) -> list[Regions]:
        """images (N, 3, H, W) padded batch; image_sizes: each image's resized (h, w)."""
        selection = selection or self.cfg.selection
        selection.validate()
        device = images.device
        timer = _PartTimer(timings, device)
        amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
        with torch.inference_mode():
            with timer("backbone"), amp:
                res4 = self.backbone(images, image_sizes)["res4"]
            with timer("rpn"):
                with amp:
                    rpn_out = self.proposal_generator.predict(res4, self.backbone.feature_sizes(image_sizes))
                proposals, _ = self.proposal_generator.find_top_proposals(rpn_out, image_sizes)
            with timer("roi_pool_res5"):
                pooled = self.roi_heads.pool(res4, proposals)
                with amp:
                    x = self.roi_heads.res5(pooled)
                feats = x.float().mean(dim=(2, 3))
            with timer("predictor_selection"):
                out = self._predict_and_select(feats, proposals, image_sizes, scales, original_sizes, selection)
        return out

    def _predict_and_select(self, feats, proposals, image_sizes, scales, original_sizes,
                            selection: SelectionConfig) -> list[Regions]:
        predictor = self.roi_heads.box_predictor
        cls_logits, deltas = predictor(feats)
        probs = F.softmax(cls_logits.float(), dim=1)
        results = []
        start = 0
        for i, boxes in enumerate(proposals):
            n = len(boxes)
            f_i, p_i = feats[start:start + n], probs[start:start + n]
            regressed = None
            if selection.method == "max_class":
                d_i = deltas[start:start + n].float()
                regressed = self.roi_heads.box2box_transform.apply_deltas(d_i, boxes)
                regressed = clip_boxes(regressed.view(n, -1, 4), *image_sizes[i])
            start += n
            sel = select_boxes(boxes, p_i[:, :-1], selection, regressed)
            kept_feats = f_i[sel.keep]
            obj_conf, obj_id = p_i[sel.keep, :-1].max(dim=1)
            # the embedding takes the argmax over all C+1 logits, background included (AIR/HF/Caffe)
            attr_logits = predictor.attribute_logits(kept_feats, p_i[sel.keep].argmax(dim=1))
            attr_probs = F.softmax(attr_logits.float(), dim=1)
            attr_conf, attr_id = attr_probs[:, :-1].max(dim=1)
            H, W = original_sizes[i]
            out_boxes = clip_boxes(sel.boxes.float() / scales[i], H, W)
            results.append(Regions(out_boxes, kept_feats.float(), obj_id, obj_conf.float(), attr_id,
                                   attr_conf.float(), num_proposals=n))
        return results


def build_detector(cfg: DetectorConfig) -> GeneralizedRCNN:
    return GeneralizedRCNN(cfg)
