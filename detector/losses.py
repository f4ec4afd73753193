"""Detector training losses as plain tensor functions (detectron2's formulas and normalisers).

- RPN (detectron2 `RPN.losses`): binary cross-entropy on the objectness logits of the sampled
  anchors, and smooth-L1 (L1 at beta 0, detectron2's default) on the deltas of the positive
  anchors; both summed and divided by `batch_size_per_image * num_images` (the configured
  sample size, not the number actually sampled, so an image with few positives is not
  up-weighted).
- Fast R-CNN (detectron2 `FastRCNNOutputLayers.losses`): cross-entropy over C+1 classes
  (background = index C, the last) averaged over the sampled RoIs; class-specific smooth-L1
  on the deltas of the foreground RoIs' ground-truth class, targets encoded with weights
  (10, 10, 5, 5), summed and divided by the number of sampled RoIs (not of foreground ones).
- Attributes: see `attribute_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detector.boxes import Box2BoxTransform


def smooth_l1_loss(input: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Summed smooth-L1; beta < 1e-5 is plain L1 (detectron2 avoids 0.5 x^2 / beta at beta 0)."""
    diff = (input - target).abs()
    if beta < 1e-5:
        return diff.sum()
    return torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta).sum()


def rpn_losses(objectness_logits: list[torch.Tensor], anchor_deltas: list[torch.Tensor],
               anchors: list[torch.Tensor], gt_labels: list[torch.Tensor], matched_gt_boxes: list[torch.Tensor],
               box2box_transform: Box2BoxTransform, batch_size_per_image: int,
               smooth_l1_beta: float = 0.0) -> dict[str, torch.Tensor]:
    """Per image i: logits (A_i,), deltas (A_i, 4), anchors (A_i, 4), gt_labels (A_i,) in
    {-1 ignored / not sampled, 0 background, 1 object}, matched_gt_boxes (A_i, 4) (used where
    the label is 1). -> {"loss_rpn_cls", "loss_rpn_loc"}."""
    logits, deltas = torch.cat(objectness_logits), torch.cat(anchor_deltas)
    labels, anchors_all = torch.cat(gt_labels), torch.cat(anchors)
    gt_boxes = torch.cat(matched_gt_boxes)
    positive = labels == 1
    valid = labels >= 0
    target_deltas = box2box_transform.get_deltas(anchors_all[positive], gt_boxes[positive])
    loc = smooth_l1_loss(deltas[positive].float(), target_deltas, smooth_l1_beta)
    cls = F.binary_cross_entropy_with_logits(logits[valid].float(), labels[valid].float(), reduction="sum")
    normalizer = float(batch_size_per_image * len(gt_labels))
    return {"loss_rpn_cls": cls / normalizer, "loss_rpn_loc": loc / normalizer}


def fast_rcnn_losses(class_logits: torch.Tensor, box_deltas: torch.Tensor, proposal_boxes: torch.Tensor,
                     gt_classes: torch.Tensor, gt_boxes: torch.Tensor, box2box_transform: Box2BoxTransform,
                     smooth_l1_beta: float = 0.0) -> dict[str, torch.Tensor]:
    """class_logits (R, C+1), box_deltas (R, 4C), proposal_boxes (R, 4), gt_classes (R,) in
    [0, C] (C = background), gt_boxes (R, 4) (used for foreground RoIs).
    -> {"loss_cls", "loss_box_reg"}."""
    num_classes = class_logits.shape[1] - 1
    loss_cls = F.cross_entropy(class_logits.float(), gt_classes, reduction="mean")
    fg = torch.nonzero((gt_classes >= 0) & (gt_classes < num_classes)).flatten()
    fg_deltas = box_deltas.float().view(-1, num_classes, 4)[fg, gt_classes[fg]]
    target_deltas = box2box_transform.get_deltas(proposal_boxes[fg].float(), gt_boxes[fg].float())
    loss_box = smooth_l1_loss(fg_deltas, target_deltas, smooth_l1_beta) / max(gt_classes.numel(), 1)
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box}


def attribute_loss(attribute_logits: torch.Tensor, gt_attributes: torch.Tensor,
                   loss_weight: float = 0.5) -> torch.Tensor:
    """Multi-label attributes with a softmax: attribute_logits (F, A+1) of foreground RoIs
    ("no attribute" last), gt_attributes (F, M) the object's attribute ids in [0, A), padded
    with -1.

    Each annotated attribute is a softmax cross-entropy target, weighted 1/n for an object
    with n attributes (every object counts once); the sum is averaged over the objects with
    at least one attribute and scaled by `loss_weight`. Objects without attributes add
    nothing: in Visual Genome most objects simply were not given attributes, which is not a
    statement that they have none. This is the Caffe bottom-up-attention / grid-feats
    formulation (softmax, weight 0.5 in Caffe/BUA), chosen over per-attribute BCE so training
    matches how every consumer reads the head: `attrs_id`/`attrs_conf` are the argmax and the
    probability of a softmax over the A+1 logits (docs/reference/detector.md §4), and the released checkpoints
    were trained this way. With n attributes the ideal softmax puts 1/n on each of them, so
    the argmax is one of the object's true attributes.
    """
    if gt_attributes.numel() == 0 or attribute_logits.shape[0] == 0:
        return attribute_logits.sum() * 0.0     # keeps the head in the graph (DDP needs every parameter)
    num_per_object = (gt_attributes >= 0).sum(dim=1)
    annotated = num_per_object > 0
    if not bool(annotated.any()):
        return attribute_logits.sum() * 0.0
    F_, M = gt_attributes.shape
    logits = attribute_logits.float().unsqueeze(1).expand(F_, M, attribute_logits.shape[1])
    per_label = F.cross_entropy(logits.reshape(F_ * M, -1), gt_attributes.reshape(-1), ignore_index=-1,
                                reduction="none").view(F_, M)
    per_object = per_label.sum(dim=1) / num_per_object.clamp(min=1)
    return loss_weight * per_object[annotated].sum() / annotated.sum()
