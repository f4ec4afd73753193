"""Region proposal network: `proposal_generator.{anchor_generator, rpn_head}` (detectron2 names).

Test-time proposals follow detectron2's `find_top_rpn_proposals` (what AIR/HF run,
docs/reference/detector.md §1.0): top `pre_nms_topk` anchors by objectness logit -> decode -> clip to the image -> drop
empty boxes -> NMS 0.7 -> top `post_nms_topk` (300 for vg-r101-c4). A padded batch is handled
image by image on each image's own feature extent (anchors over padding never compete), each
image's NMS its own call.

Training (`losses`): each image's anchors are matched to its gt boxes (IoU >= 0.7 object,
< 0.3 background, in between ignored, plus each gt's best anchor), 256 are sampled with at
most half positive, and detector/losses.py:rpn_losses scores them. Anchors crossing the
image border are kept (detectron2's BOUNDARY_THRESH -1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from torchvision.ops import box_iou, nms

from detector.boxes import Box2BoxTransform, clip_boxes
from detector.config import RPNConfig
from detector.losses import rpn_losses
from detector.matcher import Matcher
from detector.sampling import subsample_labels


def cell_anchors(sizes, aspect_ratios) -> torch.Tensor:
    """(len(sizes) * len(ratios), 4) anchors centred at 0, size-major (detectron2 order)."""
    rows = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32)


class DefaultAnchorGenerator(nn.Module):
    def __init__(self, sizes, aspect_ratios, stride: int, offset: float = 0.0):
        super().__init__()
        self.stride = stride
        self.offset = offset
        # Non-persistent, as in current detectron2: anchors come from the config, and the
        # checkpoint loader checks any `cell_anchors.0` a file carries against them.
        self.register_buffer("cell_anchors_0", cell_anchors(sizes, aspect_ratios), persistent=False)

    @property
    def num_anchors(self) -> int:
        return self.cell_anchors_0.shape[0]

    def grid_anchors(self, height: int, width: int) -> torch.Tensor:
        """(height * width * A, 4) anchors ordered (y, x, anchor) like the head's outputs."""
        base = self.cell_anchors_0
        shifts_x = torch.arange(self.offset * self.stride, width * self.stride, step=self.stride,
                                dtype=torch.float32, device=base.device)[:width]
        shifts_y = torch.arange(self.offset * self.stride, height * self.stride, step=self.stride,
                                dtype=torch.float32, device=base.device)[:height]
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


class StandardRPNHead(nn.Module):
    def __init__(self, in_channels: int, hidden_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, stride=1, padding=1)
        self.objectness_logits = nn.Conv2d(hidden_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(hidden_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(x))
        # the 1x1 heads stay in float32 under autocast: their outputs become box coordinates,
        # and bf16 deltas (8 mantissa bits) would move a 300-pixel box by a pixel or more
        with torch.autocast(x.device.type, enabled=False):
            t = t.float()
            return self.objectness_logits(t), self.anchor_deltas(t)


@dataclass
class RPNOutputs:
    """Per image: its anchors and the head's predictions on its own feature extent.

    `objectness_logits[i]` (H_i*W_i*A,), `anchor_deltas[i]` (H_i*W_i*A, 4), `anchors[i]` the
    matching anchors: what a detector-training loss needs (labels come from the anchors).
    """
    anchors: list[torch.Tensor]
    objectness_logits: list[torch.Tensor]
    anchor_deltas: list[torch.Tensor]


class RPN(nn.Module):
    def __init__(self, cfg: RPNConfig, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.anchor_generator = DefaultAnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios,
                                                       cfg.anchor_stride, cfg.anchor_offset)
        self.rpn_head = StandardRPNHead(in_channels, cfg.hidden_channels, self.anchor_generator.num_anchors)
        self.box2box_transform = Box2BoxTransform(cfg.bbox_reg_weights)
        self.anchor_matcher = Matcher(cfg.iou_thresholds, (0, -1, 1), allow_low_quality_matches=True)

    def predict(self, features: torch.Tensor, feature_sizes: list[tuple[int, int]]) -> RPNOutputs:
        """Head outputs per image, cut to each image's own (h, w) on the res4 grid."""
        logits, deltas = self.rpn_head(features)
        N, A, H, W = logits.shape
        logits = logits.float().permute(0, 2, 3, 1)                       # N, H, W, A
        deltas = deltas.float().view(N, A, 4, H, W).permute(0, 3, 4, 1, 2)  # N, H, W, A, 4
        out = RPNOutputs([], [], [])
        for i, (h, w) in enumerate(feature_sizes):
            out.anchors.append(self.anchor_generator.grid_anchors(h, w))
            out.objectness_logits.append(logits[i, :h, :w].reshape(-1))
            out.anchor_deltas.append(deltas[i, :h, :w].reshape(-1, 4))
        return out

    def find_top_proposals(self, rpn_out: RPNOutputs, image_sizes: list[tuple[int, int]],
                           training: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """-> (proposal boxes per image (P_i, 4), their objectness logits (P_i,)).

        Boxes that are empty or not finite are not removed before NMS (a boolean mask would
        make the host wait for its count) but become an empty box scored -inf: ranked after
        every real box, they suppress nothing, and they are cut from the tail of each
        image's kept list afterwards, which gives exactly NMS over the real boxes. NMS runs
        per image in float64: a box of one image never suppresses another's, and one call
        over the batch would compare every pair across images (quadratic in the batch on
        either device). The kept lists' lengths are data-dependent; on a GPU each NMS call
        and the one count read at the end are this method's host synchronisations.
        """
        pre_k = self.cfg.pre_nms_topk_train if training else self.cfg.pre_nms_topk_test
        post_k = self.cfg.post_nms_topk_train if training else self.cfg.post_nms_topk_test
        kept_boxes, kept_scores = [], []
        for i, (logits, deltas, anchors) in enumerate(zip(rpn_out.objectness_logits,
                                                         rpn_out.anchor_deltas, rpn_out.anchors)):
            logits = logits.detach()
            k = min(pre_k, logits.numel())
            scores, idx = logits.topk(k, sorted=True)
            boxes = self.box2box_transform.apply_deltas(deltas.detach()[idx], anchors[idx])
            h, w = image_sizes[i]
            boxes = clip_boxes(boxes, h, w)
            bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            real = (bw > self.cfg.min_box_size) & (bh > self.cfg.min_box_size) \
                & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes = torch.where(real[:, None], boxes, 0.0)
            scores = torch.where(real, scores, float("-inf"))
            keep = nms(boxes.double(), scores.double(), self.cfg.nms_thresh)[:post_k]   # sorted by score
            kept_boxes.append(boxes[keep])
            kept_scores.append(scores[keep])
        real_counts = torch.stack([torch.isfinite(s).sum() for s in kept_scores]).tolist() if kept_scores else []
        return ([b[:n] for b, n in zip(kept_boxes, real_counts)],
                [s[:n] for s, n in zip(kept_scores, real_counts)])

    def label_and_sample_anchors(self, anchors: list[torch.Tensor], gt_boxes: list[torch.Tensor]
                                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: anchors (A_i, 4), gt boxes (G_i, 4) in input pixels -> (labels (A_i,) int8:
        1 sampled object, 0 sampled background, -1 not sampled; matched gt box (A_i, 4))."""
        labels_out, matched_out = [], []
        for anchors_i, gt_i in zip(anchors, gt_boxes):
            gt_i = gt_i.to(anchors_i)
            matched_idx, labels = self.anchor_matcher(box_iou(gt_i, anchors_i))
            positive, negative = subsample_labels(labels, self.cfg.batch_size_per_image,
                                                  self.cfg.positive_fraction, 0)
            sampled = torch.full_like(labels, -1)
            sampled[positive] = 1
            sampled[negative] = 0
            labels_out.append(sampled)
            matched_out.append(gt_i[matched_idx] if len(gt_i) else torch.zeros_like(anchors_i))
        return labels_out, matched_out

    def losses(self, rpn_out: RPNOutputs, gt_boxes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """{"loss_rpn_cls", "loss_rpn_loc"} of this image batch (gt boxes in input pixels)."""
        labels, matched = self.label_and_sample_anchors(rpn_out.anchors, gt_boxes)
        return rpn_losses(rpn_out.objectness_logits, rpn_out.anchor_deltas, rpn_out.anchors, labels, matched,
                          self.box2box_transform, self.cfg.batch_size_per_image, self.cfg.smooth_l1_beta)
