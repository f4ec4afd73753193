"""Res5 RoI heads with the attribute head: `roi_heads.{res5, box_predictor}` (detectron2 names).

RoIPool 14x14 at 1/16 on res4 (torchvision's CPU kernel is the Caffe kernel line for line),
res5 (3 bottlenecks, stride 1, 3x3 convs dilated by 2), mean over the 14x14 grid = the saved
D-dim feature (Caffe `pool5_flat`). The predictor: `cls_score` (C+1 logits, background last),
`bbox_pred` (class-specific, C*4, weights 10/10/5/5), and the attribute head of AIR/HF
(`cls_embedding` of the argmax class over all C+1 logits, concatenated to the feature,
`fc_attr` + ReLU, `attr_score` with "no attribute" last).

Training (`losses`): the gt boxes are appended to each image's proposals (so every object
has a perfect RoI from the first step), RoIs are matched to gt at IoU 0.5, 512 are sampled
with at most a quarter foreground, and detector/losses.py scores classes, class-specific
boxes and, on the foreground RoIs with the gt class embedded, attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, roi_pool

from detector.backbone import make_stage
from detector.boxes import Box2BoxTransform
from detector.config import ResNetConfig, ROIHeadsConfig
from detector.inference import Detections, fast_rcnn_inference
from detector.losses import attribute_loss, fast_rcnn_losses
from detector.matcher import Matcher
from detector.sampling import subsample_labels


@dataclass
class SampledRoIs:
    """The RoIs one training step scores: per-image boxes, and per-RoI targets concatenated."""
    boxes: list[torch.Tensor]        # per image (R_i, 4), input pixels
    gt_classes: torch.Tensor         # (sum R_i,) int64 in [0, C], C = background
    gt_boxes: torch.Tensor           # (sum R_i, 4) the matched gt box (zeros for background)
    gt_attributes: torch.Tensor      # (sum R_i, M) int64 attribute ids of the matched gt, -1 padded


class FastRCNNOutputLayers(nn.Module):
    def __init__(self, in_features: int, num_classes: int, num_attributes: int,
                 attr_embed_dim: int, attr_hidden_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        self.cls_embedding = nn.Embedding(num_classes + 1, attr_embed_dim)
        self.fc_attr = nn.Linear(in_features + attr_embed_dim, attr_hidden_dim)
        self.attr_score = nn.Linear(attr_hidden_dim, num_attributes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.normal_(self.attr_score.weight, std=0.01)
        for layer in (self.cls_score, self.bbox_pred, self.attr_score):
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, D) features -> class logits (R, C+1), box deltas (R, C*4)."""
        return self.cls_score(x), self.bbox_pred(x)

    def attribute_logits(self, x: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """(R, A+1) attribute logits given a class per RoI (test: argmax over all C+1 logits;
        training: the ground-truth class)."""
        emb = self.cls_embedding(class_ids)
        return self.attr_score(F.relu(self.fc_attr(torch.cat([x, emb.to(x.dtype)], dim=1))))


class Res5ROIHeads(nn.Module):
    def __init__(self, cfg: ROIHeadsConfig, resnet: ResNetConfig, stride: int = 16):
        super().__init__()
        self.cfg = cfg
        self.spatial_scale = 1.0 / stride
        self.res5 = make_stage(resnet.res5_blocks, resnet.res4_channels, resnet.res5_channels,
                               resnet.width_per_group * 8, first_stride=1, dilation=resnet.res5_dilation,
                               stride_in_1x1=resnet.stride_in_1x1, norm=resnet.norm)
        self.box_predictor = FastRCNNOutputLayers(resnet.res5_channels, cfg.num_classes, cfg.num_attributes,
                                                  cfg.attr_embed_dim, cfg.attr_hidden_dim)
        self.box2box_transform = Box2BoxTransform(cfg.bbox_reg_weights)
        self.proposal_matcher = Matcher((cfg.iou_threshold,), (0, 1), allow_low_quality_matches=False)

    def pool(self, res4: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """RoIPool of every image's boxes: (sum R_i, C4, P, P). Runs in float32 (no bf16 kernel)."""
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=b.device), b.float()], dim=1)
                          for i, b in enumerate(boxes)])
        r = self.cfg.pooler_resolution
        return roi_pool(res4.float(), rois, output_size=(r, r), spatial_scale=self.spatial_scale)

    def box_features(self, res4: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """(sum R_i, D): res5 over each RoI, mean over the grid (Caffe pool5_flat)."""
        x = self.res5(self.pool(res4, boxes))
        return x.mean(dim=(2, 3))

    def label_and_sample_proposals(self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
                                   ) -> SampledRoIs:
        """proposals per image (P_i, 4); targets per image {"boxes" (G, 4), "classes" (G,),
        "attributes" (G, M) -1 padded} in input pixels."""
        C = self.cfg.num_classes
        width = max([int(t["attributes"].shape[1]) for t in targets] + [1])
        boxes_out, classes_out, gt_boxes_out, attrs_out = [], [], [], []
        for props, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(props.dtype)
            boxes = torch.cat([props.detach(), gt_boxes])
            attrs = target["attributes"]
            attrs = F.pad(attrs, (0, width - attrs.shape[1]), value=-1) if attrs.shape[1] < width else attrs
            if len(gt_boxes):
                matched_idx, labels = self.proposal_matcher(box_iou(gt_boxes, boxes))
                classes = target["classes"][matched_idx].clone()
                classes[labels == 0] = C
                classes[labels == -1] = -1
            else:
                matched_idx = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
                classes = torch.full((len(boxes),), C, dtype=torch.int64, device=boxes.device)
            positive, negative = subsample_labels(classes, self.cfg.batch_size_per_image,
                                                  self.cfg.positive_fraction, C)
            keep = torch.cat([positive, negative])
            boxes_out.append(boxes[keep])
            classes_out.append(classes[keep])
            if len(gt_boxes):
                gt_boxes_out.append(gt_boxes[matched_idx[keep]])
                attrs_out.append(attrs[matched_idx[keep]])
            else:
                gt_boxes_out.append(torch.zeros((len(keep), 4), dtype=boxes.dtype, device=boxes.device))
                attrs_out.append(torch.full((len(keep), width), -1, dtype=torch.int64, device=boxes.device))
        return SampledRoIs(boxes_out, torch.cat(classes_out), torch.cat(gt_boxes_out), torch.cat(attrs_out))

    def losses(self, res4: torch.Tensor, proposals: list[torch.Tensor],
               targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{"loss_cls", "loss_box_reg", "loss_attr"} of the sampled RoIs."""
        sampled = self.label_and_sample_proposals(proposals, targets)
        feats = self.box_features(res4, sampled.boxes)
        class_logits, box_deltas = self.box_predictor(feats)
        losses = fast_rcnn_losses(class_logits, box_deltas, torch.cat(sampled.boxes), sampled.gt_classes,
                                  sampled.gt_boxes, self.box2box_transform, self.cfg.smooth_l1_beta)
        fg = (sampled.gt_classes >= 0) & (sampled.gt_classes < self.cfg.num_classes)
        attr_logits = self.box_predictor.attribute_logits(feats[fg], sampled.gt_classes[fg])
        losses["loss_attr"] = attribute_loss(attr_logits, sampled.gt_attributes[fg], self.cfg.attr_loss_weight)
        return losses

    def detect(self, res4: torch.Tensor, proposals: list[torch.Tensor],
               image_sizes: list[tuple[int, int]]) -> list[Detections]:
        """Scored, class-specific regressed boxes per image (box evaluation), input pixels."""
        feats = self.box_features(res4, proposals)
        class_logits, box_deltas = self.box_predictor(feats)
        out, start = [], 0
        for props, size in zip(proposals, image_sizes):
            n = len(props)
            out.append(fast_rcnn_inference(class_logits[start:start + n], box_deltas[start:start + n], props, size,
                                           self.box2box_transform, score_thresh=self.cfg.score_thresh_test,
                                           nms_thresh=self.cfg.nms_thresh_test,
                                           detections_per_image=self.cfg.detections_per_image))
            start += n
        return out
