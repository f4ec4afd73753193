"""Image -> detector input (docs/reference/detector.md §3, the Caffe/LXMERT rule).

BGR float, mean subtracted (std 1, 0-255 range); scale s = min_size / short side, unless
round(s * long side) > max_size, then s = max_size / long side; bilinear resize without
antialiasing (cv2 INTER_LINEAR semantics, half-pixel centres) to (round(h*s), round(w*s)).
Resizing and mean subtraction commute for bilinear interpolation, so Caffe's order (subtract,
then resize a float image) gives the same numbers. Batches are zero-padded at the bottom and
right *after* mean subtraction, like Caffe's im_list_to_blob. The same code runs on any
device: a GPU prepares the images it decoded (`prepare_chw`).

Remaining difference from Caffe: cv2 computes its sampling grid from fx=s, this from the
rounded output size (sub-pixel on the last column). Orientation is the decoder's business:
the pixels given here are used as they are (pipeline/images.py turns photos upright by their
EXIF tag; detector training feeds the stored frame its boxes refer to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from detector.config import InputConfig
from detector.device import host_values


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    short, long = min(height, width), max(height, width)
    scale = min_size / short
    if round(scale * long) > max_size:
        scale = max_size / long
    return scale


@dataclass
class PreparedImage:
    tensor: torch.Tensor        # (3, h, w) float32 BGR, mean subtracted, resized
    scale: float                # resized = original * scale
    original_size: tuple[int, int]   # (height, width) in original pixels


def prepare_image(rgb: np.ndarray | torch.Tensor, cfg: InputConfig) -> PreparedImage:
    """rgb: (H, W, 3) uint8 in RGB order (what PIL gives)."""
    if isinstance(rgb, np.ndarray) and not rgb.flags.writeable:
        rgb = rgb.copy()   # torch refuses to wrap read-only memory (PIL's buffers are)
    img = torch.as_tensor(rgb)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {tuple(img.shape)}")
    return prepare_chw(img.permute(2, 0, 1), cfg)


def prepare_chw(chw: torch.Tensor, cfg: InputConfig) -> PreparedImage:
    """chw: (3, H, W) uint8 RGB on any device (what `torchvision.io.decode_jpeg` gives); the
    result stays on that device, so a GPU prepares the images it decoded."""
    if chw.ndim != 3 or chw.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) RGB tensor, got shape {tuple(chw.shape)}")
    H, W = int(chw.shape[1]), int(chw.shape[2])
    chw = chw.float()
    if cfg.format == "BGR":
        chw = chw.flip(0)
    chw = chw - host_values(cfg.pixel_mean, torch.float32, chw.device).view(3, 1, 1)
    scale = resize_scale(H, W, cfg.min_size, cfg.max_size)
    h, w = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    if (h, w) != (H, W):
        chw = F.interpolate(chw[None], size=(h, w), mode="bilinear", align_corners=False,
                            antialias=False)[0]
    return PreparedImage(chw.contiguous(), scale, (H, W))


def pad_batch(tensors: list[torch.Tensor], size_divisibility: int = 1) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad (3, h_i, w_i) images to one (N, 3, H, W) batch, H and W the largest sides
    rounded up to a multiple of `size_divisibility` (detectron2's name): on CUDA a few
    distinct shapes let cuDNN's autotuner reuse what it measured. The padding changes no
    result (the backbone masks it, detector/backbone.py)."""
    sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
    H, W = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if size_divisibility > 1:
        H, W = -(-H // size_divisibility) * size_divisibility, -(-W // size_divisibility) * size_divisibility
    batch = tensors[0].new_zeros((len(tensors), 3, H, W))
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    return batch, sizes
