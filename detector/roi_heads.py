"""Res5 RoI heads with the attribute head: `roi_heads.{res5, box_predictor}` (detectron2 names).

RoIPool 14x14 at 1/16 on res4 (torchvision's CPU kernel is the Caffe kernel line for line),
res5 (3 bottlenecks, stride 1, 3x3 convs dilated by 2), mean over the 14x14 grid = the saved
D-dim feature (Caffe `pool5_flat`). The predictor: `cls_score` (C+1 logits, background last),
`bbox_pred` (class-specific, C*4, weights 10/10/5/5), and the attribute head of AIR/HF
(`cls_embedding` of the argmax class over all C+1 logits, concatenated to the feature,
`fc_attr` + ReLU, `attr_score` with "no attribute" last).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_pool

from detector.backbone import make_stage
from detector.boxes import Box2BoxTransform
from detector.config import ResNetConfig, ROIHeadsConfig


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
