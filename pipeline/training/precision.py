"""Which autocast precision a small model's recipe picks on this machine.

The CPU flags alone do not settle it: among CPUs with AVX512-BF16, some run bf16 matmuls
several times faster than fp32 and some (without AMX) at half the rate
(research/2026-11-27-cpu-bf16-precision.md). So bf16 is chosen where the flags allow it and
a short matmul measurement shows it clearly faster; the run's config.yaml records the choice.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache

log = logging.getLogger(__name__)

# autocast's casts eat part of a faster matmul in these small networks, so bf16 must win the
# matmul by a wide margin to win the step
BF16_MIN_MATMUL_SPEEDUP = 2.0


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX in the CPU flags; without them bf16 is emulated (always slower)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache(maxsize=1)
def cpu_bf16_matmul_speedup(size: int = 512, repeats: int = 8, rounds: int = 3) -> float:
    """bf16 over fp32 matmul throughput at this process's torch thread count (~0.1 s):
    the best of `rounds` interleaved timings per dtype, so load from other processes hits
    both alike."""
    import torch

    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    operands = {dtype: (torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)) for dtype in best}
    for dtype, (a, b) in operands.items():
        a @ b   # first call: kernel selection, not timed
    for _ in range(rounds):
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def fast_precision(device: str = "cpu") -> str:
    """bf16 autocast on CUDA, and on CPUs where bf16 matmuls are measured clearly faster;
    else fp32."""
    if device.startswith("cuda"):
        return "bf16"
    if not cpu_has_native_bf16():
        return "fp32"
    speedup = cpu_bf16_matmul_speedup()
    choice = "bf16" if speedup >= BF16_MIN_MATMUL_SPEEDUP else "fp32"
    log.debug("bf16 matmul at %.1fx the fp32 rate here: %s autocast", speedup, choice)
    return choice
