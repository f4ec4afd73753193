"""Which autocast precision a small model's recipe picks on this machine.

The CPU flags alone do not settle it: among CPUs with AVX512-BF16, some run bf16 matmuls
several times faster than fp32 and some (without AMX) at half the rate
(research/2026-11-27-cpu-bf16-precision.md). So bf16 is chosen where the flags allow it and
a short matmul measurement shows it clearly faster.

The measurement is taken once per machine and kept in the user's cache
(`$LXMERT_PIPELINE_CACHE/precision.json`, default `~/.cache/lxmert-pipeline/`), keyed by
the CPU model, torch's version and thread count. Measured afresh in every process it flipped
between runs of one command wherever the ratio sits near the threshold (2.2x on one 2-core
Xeon, under a neighbour's load below 2x), so two identical fine-tunings trained in bf16 and
fp32. Cached, one machine makes one choice for a command; the choice is not made explicit
in the recipes instead because the fast one differs between machines (4.4x on an EPYC,
0.5x on a Xeon without AMX) and the small recipes should stay fast on both. Every run
records what it trained with (`train.precision` in config.yaml), `--resume` reuses that
record whatever the cache says now, and `--precision` overrides the choice. Deleting the
cache file makes the next run measure again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

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
    """bf16 autocast on CUDA, and on CPUs where bf16 matmuls are measured clearly faster
    (measured once per machine: `machine_cpu_precision`); else fp32."""
    if device.startswith("cuda"):
        return "bf16"
    if not cpu_has_native_bf16():
        return "fp32"
    return machine_cpu_precision()


def precision_cache_file() -> Path:
    base = os.environ.get("LXMERT_PIPELINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lxmert-pipeline")
    return Path(base) / "precision.json"


def machine_key() -> str:
    """What the measurement depends on: the CPU model, torch's version and its thread count."""
    import torch

    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        model = ""
    cpu = model or platform.processor() or platform.machine()
    return f"{cpu} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def machine_cpu_precision() -> str:
    """This machine's choice from the cache, or measured now and cached."""
    path, key = precision_cache_file(), machine_key()
    cached = _cached_choice(_read_cache(path), key)
    if cached:
        return cached
    speedup = cpu_bf16_matmul_speedup()
    choice = "bf16" if speedup >= BF16_MIN_MATMUL_SPEEDUP else "fp32"
    log.info("bf16 matmul at %.1fx the fp32 rate on this machine: %s autocast for the small recipes "
             "(kept in %s)", speedup, choice, path)
    entries = _read_cache(path)
    if _cached_choice(entries, key):     # another process measured meanwhile: one choice per machine
        return _cached_choice(entries, key)
    entries[key] = {"precision": choice, "bf16_matmul_speedup": round(speedup, 2),
                    "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        from pipeline.atomic import write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, entries)
    except OSError as err:   # a read-only home: the choice holds for this process only
        log.warning("cannot keep the precision choice in %s (%s): the next run measures again", path,
                    err.strerror or err)
    return choice


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _cached_choice(entries: dict, key: str) -> str | None:
    entry = entries.get(key)
    choice = entry.get("precision") if isinstance(entry, dict) else None
    return choice if choice in ("bf16", "fp32") else None
