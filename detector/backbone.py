"""ResNet C4 backbone (stem, res2-res4) and the bottleneck blocks shared with res5.

Module and parameter names follow detectron2 (`stem.conv1`, `res2.0.conv1.norm.weight`,
`res3.0.shortcut`, ...), so `backbone.*` keys of the bottom-up-attention checkpoints load
unchanged. Caffe details (docs/reference/detector.md §1.0): max-pool with pad 0 and ceil mode, the stride in
the 1x1 conv, BatchNorm eps 1e-5.

Padded batches: `ResNet.forward(x, image_sizes)` zeroes each image's padded area before every
spatial op (max-pool, 3x3 convs). Those ops then see exactly the zeros the conv's own padding
gives a lone image, so the valid part of each feature map equals the batch-1 result (up to
floating-point summation order). Without it the padded area carries BN bias values into the
border features, which is the "padding affects the results a little" of AIR issue #3.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detector.config import ResNetConfig

Sizes = list[tuple[int, int]]


def get_norm(norm: str, channels: int) -> nn.Module:
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, eps=1e-5)
    if norm == "BN":
        return nn.BatchNorm2d(channels, eps=1e-5)
    raise ValueError(f"unknown norm {norm!r} (use 'FrozenBN' or 'BN')")


class Conv2d(nn.Conv2d):
    """detectron2's Conv2d: a convolution that owns its normalisation as `.norm`."""

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return x

    def output_size(self, size: int, dim: int = 0) -> int:
        k, s, p, d = self.kernel_size[dim], self.stride[dim], self.padding[dim], self.dilation[dim]
        return (size + 2 * p - d * (k - 1) - 1) // s + 1


def convert_frozen_batchnorm_(module: nn.Module) -> None:
    """Replace every BatchNorm2d owned by a `Conv2d` below `module` with a FrozenBatchNorm2d
    holding the same affine map and statistics (the keys stay weight/bias/running_*)."""
    for conv in module.modules():
        if isinstance(conv, Conv2d) and isinstance(conv.norm, nn.BatchNorm2d):
            bn = conv.norm
            frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps).to(bn.weight.device)
            with torch.no_grad():
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
            conv.norm = frozen


def fold_norm_into_conv(conv: Conv2d) -> None:
    """Inference only: fold a FrozenBN/eval-BN into the conv's weight and bias (one op less)."""
    norm = conv.norm
    if norm is None:
        return
    eps = getattr(norm, "eps", 1e-5)
    scale = norm.weight.detach() * (norm.running_var.detach() + eps).rsqrt()
    shift = norm.bias.detach() - norm.running_mean.detach() * scale
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        if conv.bias is None:
            conv.bias = nn.Parameter(shift.clone())
        else:
            conv.bias.mul_(scale).add_(shift)
    conv.norm = None


def mask_padding(x: torch.Tensor, sizes: Sizes | None) -> torch.Tensor:
    """Zero every image's area beyond its own (h, w); no-op when nothing is padded."""
    if sizes is None:
        return x
    H, W = x.shape[-2:]
    if all(h == H and w == W for h, w in sizes):
        return x
    mask = x.new_zeros((x.shape[0], 1, H, W))
    for i, (h, w) in enumerate(sizes):
        mask[i, :, :h, :w] = 1
    return x * mask


class BasicStem(nn.Module):
    def __init__(self, out_channels: int, norm: str, caffe_maxpool: bool):
        super().__init__()
        self.conv1 = Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
                            norm=get_norm(norm, out_channels))
        self.caffe_maxpool = caffe_maxpool

    def pool_output_size(self, size: int) -> int:
        if self.caffe_maxpool:
            return -(-(size - 3) // 2) + 1     # ceil mode, pad 0 (Caffe pool1)
        return (size + 2 - 3) // 2 + 1

    def forward(self, x: torch.Tensor, sizes: Sizes | None = None) -> tuple[torch.Tensor, Sizes | None]:
        x = F.relu_(self.conv1(x))
        if sizes is not None:
            sizes = [(self.conv1.output_size(h, 0), self.conv1.output_size(w, 1)) for h, w in sizes]
            x = mask_padding(x, sizes)   # post-ReLU values >= 0, so padded zeros never win the max
        if self.caffe_maxpool:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        else:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if sizes is not None:
            sizes = [(self.pool_output_size(h), self.pool_output_size(w)) for h, w in sizes]
        return x, sizes


class BottleneckBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, *,
                 stride: int = 1, dilation: int = 1, stride_in_1x1: bool = True, norm: str = "FrozenBN"):
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                                   norm=get_norm(norm, out_channels))
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1,
                            bias=False, norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
                            padding=dilation, dilation=dilation, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))

    def forward(self, x: torch.Tensor, sizes: Sizes | None = None) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if sizes is not None:
            sizes = [(self.conv1.output_size(h, 0), self.conv1.output_size(w, 1)) for h, w in sizes]
            out = mask_padding(out, sizes)
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)

    def output_sizes(self, sizes: Sizes) -> Sizes:
        sizes = [(self.conv1.output_size(h, 0), self.conv1.output_size(w, 1)) for h, w in sizes]
        return [(self.conv2.output_size(h, 0), self.conv2.output_size(w, 1)) for h, w in sizes]


def make_stage(num_blocks: int, in_channels: int, out_channels: int, bottleneck_channels: int, *,
               first_stride: int, dilation: int, stride_in_1x1: bool, norm: str) -> nn.Sequential:
    blocks = []
    for i in range(num_blocks):
        blocks.append(BottleneckBlock(in_channels, out_channels, bottleneck_channels,
                                      stride=first_stride if i == 0 else 1, dilation=dilation,
                                      stride_in_1x1=stride_in_1x1, norm=norm))
        in_channels = out_channels
    return nn.Sequential(*blocks)


def run_stage(stage: nn.Sequential, x: torch.Tensor, sizes: Sizes | None) -> tuple[torch.Tensor, Sizes | None]:
    for block in stage:
        x = block(x, sizes)
        if sizes is not None:
            sizes = block.output_sizes(sizes)
    return x, sizes


class ResNet(nn.Module):
    """stem -> res2 -> res3 -> res4; `forward` returns {"res4": stride-16 features}."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = BasicStem(cfg.stem_out_channels, cfg.norm, cfg.caffe_maxpool)
        in_ch, out_ch, width = cfg.stem_out_channels, cfg.res2_out_channels, cfg.width_per_group
        for idx, (name, n) in enumerate(zip(("res2", "res3", "res4"), cfg.blocks)):
            stage = make_stage(n, in_ch, out_ch, width, first_stride=1 if idx == 0 else 2, dilation=1,
                               stride_in_1x1=cfg.stride_in_1x1, norm=cfg.norm)
            self.add_module(name, stage)
            in_ch, out_ch, width = out_ch, out_ch * 2, width * 2
        self.out_channels = in_ch
        self.freeze(cfg.freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """detectron2 FREEZE_AT: 0 = train everything, 1 = stem, 2 = stem + res2, ... get no
        gradients, and their norms become FrozenBN (as detectron2's `ResNet.freeze` does), so a
        frozen stage stays the same function in training too (a BatchNorm2d in train mode
        would normalise with batch statistics and keep moving its running averages)."""
        frozen = [self.stem, self.res2, self.res3, self.res4][:freeze_at]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
            convert_frozen_batchnorm_(module)

    def feature_sizes(self, image_sizes: Sequence[tuple[int, int]]) -> Sizes:
        """Each image's own res4 (h, w): what a batch-1 forward would produce."""
        sizes = [(self.stem.conv1.output_size(h, 0), self.stem.conv1.output_size(w, 1)) for h, w in image_sizes]
        sizes = [(self.stem.pool_output_size(h), self.stem.pool_output_size(w)) for h, w in sizes]
        for stage in (self.res2, self.res3, self.res4):
            for block in stage:
                sizes = block.output_sizes(sizes)
        return sizes

    def forward(self, x: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
        # a lone image may be padded too (to a size multiple, for cuDNN's per-shape autotuning);
        # masking is skipped wherever nothing is padded (`mask_padding`)
        sizes = None if image_sizes is None else [tuple(s) for s in image_sizes]
        x, sizes = self.stem(x, sizes)
        for stage in (self.res2, self.res3, self.res4):
            x, sizes = run_stage(stage, x, sizes)
        return {"res4": mask_padding(x, sizes)}
