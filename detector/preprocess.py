"""Image -> detector input (docs/reference/detector.md §3, the Caffe/LXMERT rule).

BGR float, mean subtracted (std 1, 0-255 range); scale s = min_size / short side, unless
round(s * long side) > max_size, then s = max_size / long side; bilinear resize without
antialiasing (cv2 INTER_LINEAR semantics, half-pixel centres) to (round(h*s), round(w*s)).
Resizing and mean subtraction commute for bilinear interpolation, so Caffe's order (subtract,
then resize a float image) gives the same numbers. Batches are zero-padded at the bottom and
right *after* mean subtraction, like Caffe's im_list_to_blob.

Remaining differences from Caffe: cv2 computes its sampling grid from fx=s, this from the
rounded output size (sub-pixel on the last column); EXIF orientation is not applied (the
stored pixel grid is used, which is what COCO/VG boxes refer to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from detector.config import InputConfig


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
    H, W = int(img.shape[0]), int(img.shape[1])
    chw = img.permute(2, 0, 1).float()
    if cfg.format == "BGR":
        chw = chw.flip(0)
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    chw = chw - mean
    scale = resize_scale(H, W, cfg.min_size, cfg.max_size)
    h, w = max(1, int(round(H * scale))), max(1, int(round(W * scale)))
    if (h, w) != (H, W):
        chw = F.interpolate(chw[None], size=(h, w), mode="bilinear", align_corners=False,
                            antialias=False)[0]
    return PreparedImage(chw.contiguous(), scale, (H, W))


def pad_batch(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad (3, h_i, w_i) images to one (N, 3, max h, max w) batch."""
    sizes = [(int(t.shape[1]), int(t.shape[2])) for t in tensors]
    H, W = max(s[0] for s in sizes), max(s[1] for s in sizes)
    batch = tensors[0].new_zeros((len(tensors), 3, H, W))
    for i, t in enumerate(tensors):
        batch[i, :, : t.shape[1], : t.shape[2]] = t
    return batch, sizes
