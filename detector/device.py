"""What running on a CUDA device needs beyond the modules: IEEE float32, and small host values
sent without making the host wait.

Both are no-ops or plain copies on a CPU, so the code that calls them is the same on both.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def ieee_fp32(device: torch.device):
    """float32 convolutions and matmuls in IEEE float32 on CUDA (cuDNN runs float32
    convolutions in TF32 by default, 10 mantissa bits); the previous settings come back on
    exit. Nothing on a CPU."""
    if device.type != "cuda":
        yield
        return
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision"):
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision = matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:   # torch before 2.9: the legacy flags
        saved = torch.backends.cudnn.allow_tf32, matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved


def host_values(values, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A small tensor of host values on `device` without a host synchronisation: torch waits
    for a blocking copy to finish, so to CUDA it goes from pinned memory, queued on the
    stream (the pinned block is not reused before the copy has run)."""
    device = torch.device(device)
    t = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
