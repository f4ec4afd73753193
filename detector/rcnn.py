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

Precision: under `autocast_dtype` the convolutions (backbone, the RPN's 3x3 conv, res5) run
in bf16/fp16; the RPN's 1x1 objectness/delta convs, RoIPool, anchors, box decoding, NMS,
softmax and selection stay in float32 (in bf16 the proposal boxes move by pixels and the
selected set changes, docs/reference/detector.md §5). On CUDA, float32 means IEEE float32:
TF32 (cuDNN's default for convolutions) is off inside `extract`, so the fp32 path is the
CPU's up to summation order and bf16 is the fast path.

Host synchronisation on CUDA: `extract_batch` reads values on the host only where sizes
are data-dependent: one `torchvision.ops.nms` per image for the RPN (its output length)
and one read of the per-image proposal counts. The RPN's box filtering, the box selection
(`sync_free`, detector/selection.py), the attribute head and the output boxes run in
fixed shapes; the result (`BatchRegions`) stays on the device until its owner copies it.
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
from detector.device import host_values, ieee_fp32
from detector.inference import Detections
from detector.proposal_generator import RPN
from detector.roi_heads import Res5ROIHeads
from detector.selection import select_batch


@dataclass
class BatchRegions:
    """A batch's saved regions in K = max_boxes slots per image, on the model's device:
    image n's regions are rows [:count[n]] of its slots (later rows are padding). Fixed
    shapes, so producing it needs no host synchronisation; `split` reads the counts."""
    boxes: torch.Tensor          # (N, K, 4) float32, original pixels
    features: torch.Tensor       # (N, K, D) float32
    objects_id: torch.Tensor     # (N, K) int64
    objects_conf: torch.Tensor   # (N, K) float32
    attrs_id: torch.Tensor       # (N, K) int64
    attrs_conf: torch.Tensor     # (N, K) float32
    count: torch.Tensor          # (N,) int64
    num_proposals: list[int]     # per image, known on the host (the RPN's NMS gave it)

    def split(self) -> list["Regions"]:
        counts = self.count.tolist()
        return [Regions(self.boxes[i, :n], self.features[i, :n], self.objects_id[i, :n], self.objects_conf[i, :n],
                        self.attrs_id[i, :n], self.attrs_conf[i, :n], num_proposals=self.num_proposals[i])
                for i, n in enumerate(counts)]


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
        self.sink, self.device, self.cuda = sink, device, device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, part: str):
        if self.sink is None:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize(self.device)
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
                autocast_dtype: torch.dtype | None = None, timings: dict[str, float] | None = None,
                sync_free: bool | None = None) -> list[Regions]:
        """images (N, 3, H, W) padded batch; image_sizes: each image's resized (h, w).
        -> each image's regions (`extract_batch`, split per image)."""
        return self.extract_batch(images, image_sizes, scales, original_sizes, selection, autocast_dtype,
                                  timings, sync_free).split()

    def _channels_last(self) -> bool:
        # a 3x3 weight tells the layouts apart (a 1x1 one is contiguous in both)
        return self.roi_heads.res5[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)

    def extract_batch(self, images: torch.Tensor, image_sizes: list[tuple[int, int]], scales: list[float],
                      original_sizes: list[tuple[int, int]], selection: SelectionConfig | None = None,
                      autocast_dtype: torch.dtype | None = None, timings: dict[str, float] | None = None,
                      sync_free: bool | None = None) -> BatchRegions:
        """The saved regions of a padded batch, in fixed slots on the images' device.

        `autocast_dtype`: bf16/fp16 for the convolutions (module docstring). `sync_free`: the
        fixed-shape box selection (default: on CUDA; detector/selection.py). RoIs of every
        image go through res5 as one batch, in the model's memory format (channels_last
        when the model was converted to it). `timings` accumulates seconds per part
        (backbone, rpn, roi_pool, res5, predictor_selection; on CUDA each part is
        synchronised, so pass it only to measure)."""
        selection = selection or self.cfg.selection
        selection.validate()
        device = images.device
        sync_free = device.type == "cuda" if sync_free is None else sync_free
        image_sizes = [(int(h), int(w)) for h, w in image_sizes]
        timer = _PartTimer(timings, device)
        amp = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
               else contextlib.nullcontext())
        memory_format = torch.channels_last if self._channels_last() else torch.contiguous_format
        with torch.inference_mode(), ieee_fp32(device):
            with timer("backbone"), amp:
                res4 = self.backbone(images, image_sizes)["res4"]
            with timer("rpn"):
                with amp:
                    rpn_out = self.proposal_generator.predict(res4, self.backbone.feature_sizes(image_sizes))
                proposals, _ = self.proposal_generator.find_top_proposals(rpn_out, image_sizes)
            with timer("roi_pool"):
                pooled = self.roi_heads.pool(res4, proposals)
                # the dtype res5's convolutions would cast to anyway (exact: the max of rounded
                # values is the rounded max) and their layout, in one copy
                x = pooled.to(dtype=autocast_dtype or torch.float32, memory_format=memory_format)
                del pooled
            with timer("res5"), amp:
                x = self.roi_heads.res5(x)
                feats = x.mean(dim=(2, 3), dtype=torch.float32)
                del x
            with timer("predictor_selection"):
                out = self._select(feats, proposals, image_sizes, scales, original_sizes, selection, sync_free)
        return out

    def _select(self, feats: torch.Tensor, proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                scales: list[float], original_sizes: list[tuple[int, int]], selection: SelectionConfig,
                sync_free: bool) -> BatchRegions:
        """Class/box heads over all RoIs, the selection of every image, the attribute head
        over the kept regions, boxes back to original pixels: all as padded (N, ...) tensors."""
        predictor = self.roi_heads.box_predictor
        device = feats.device
        counts = [len(p) for p in proposals]
        N, K = len(proposals), selection.max_boxes
        if sum(counts) == 0:
            return self._no_regions(N, K, feats.shape[1], device, counts)
        cls_logits, deltas = predictor(feats)
        probs = F.softmax(cls_logits.float(), dim=1)                          # (T, C+1), T = sum of counts
        # row of every padded slot (N, P) in the concatenated RoIs; padding repeats a real row
        P = max(counts)
        starts = [sum(counts[:i]) for i in range(N)]
        rows = torch.stack([torch.arange(s, s + P, device=device).clamp(max=s + max(n, 1) - 1)
                            for s, n in zip(starts, counts)]).clamp(max=len(feats) - 1)
        valid = torch.stack([torch.arange(P, device=device) < n for n in counts])
        boxes = torch.cat(proposals)[rows]                                     # (N, P, 4)
        fg = probs[rows][:, :, :-1]                                            # (N, P, C)
        cls_boxes = None
        if selection.method == "max_class":
            # the argmax class's regressed box only (elementwise: as regressing every class and picking)
            cls = fg.argmax(dim=2)
            cols = cls[:, :, None] * 4 + torch.arange(4, device=device)
            d = deltas[rows[:, :, None], cols].float()
            regressed = self.roi_heads.box2box_transform.apply_deltas(d.reshape(-1, 4), boxes.reshape(-1, 4))
            hw = host_values(image_sizes, torch.float32, device)
            cls_boxes = clip_boxes(regressed.view(N, P, 4), hw[:, 0, None, None], hw[:, 1, None, None])
        sel = select_batch(boxes, fg, valid, counts, selection, cls_boxes, sync_free=sync_free)
        kept = rows.gather(1, sel.keep).flatten()                              # (N*K,)
        kept_feats, kept_probs = feats[kept], probs[kept]
        obj_conf, obj_id = kept_probs[:, :-1].max(dim=1)
        # the embedding takes the argmax over all C+1 logits, background included (AIR/HF/Caffe)
        attr_logits = predictor.attribute_logits(kept_feats, kept_probs.argmax(dim=1))
        attr_conf, attr_id = F.softmax(attr_logits.float(), dim=1)[:, :-1].max(dim=1)
        scale = host_values(scales, torch.float32, device)[:, None, None]
        hw = host_values(original_sizes, torch.float32, device)
        out_boxes = clip_boxes(sel.boxes.float() / scale, hw[:, 0, None, None], hw[:, 1, None, None])
        return BatchRegions(out_boxes, kept_feats.view(N, K, -1), obj_id.view(N, K), obj_conf.view(N, K),
                            attr_id.view(N, K), attr_conf.view(N, K), sel.count, counts)

    @staticmethod
    def _no_regions(n: int, k: int, dim: int, device: torch.device, counts: list[int]) -> BatchRegions:
        zeros = torch.zeros((n, k), device=device)
        ids = torch.zeros((n, k), dtype=torch.int64, device=device)
        return BatchRegions(torch.zeros((n, k, 4), device=device), torch.zeros((n, k, dim), device=device), ids,
                            zeros, ids.clone(), zeros.clone(), torch.zeros(n, dtype=torch.int64, device=device),
                            counts)


def build_detector(cfg: DetectorConfig) -> GeneralizedRCNN:
    return GeneralizedRCNN(cfg)
