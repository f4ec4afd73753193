"""What a benchmark ran on, printed beside its times: CPU model, cores, torch threads, load.

On a shared machine absolute times move with other people's work, so each benchmark also
measures the matmul peak in the same run (`gemm_peak_gflops`): achieved GFLOP/s as a fraction
of that peak, and ratios between variants timed in the same run, are what compare across runs.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_matrix_flags() -> str:
    """The CPU features bf16 matmuls depend on (no avx512_bf16/amx: bf16 is emulated and slow)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                    return ",".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"
    except OSError:
        pass
    return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    """One '# ...' line: CPU model and flags, logical CPUs, torch threads, load average now."""
    import torch

    return (f"# cpu: {cpu_model()} ({cpu_matrix_flags()}), {os.cpu_count()} logical cpus, "
            f"torch {torch.__version__} threads {torch.get_num_threads()}, load average {load_average()} (1/5/15 min)")


def gemm_peak_gflops(dtype, device: str = "cpu", n: int | None = None, seconds: float = 1.5) -> float:
    """Best achieved GFLOP/s of an n x n x n matmul in `dtype` at the current torch thread count
    (n: 2048 on a CPU, 8192 on a GPU, where 2048 is too small to fill the device).

    Best, not median: the peak is the ceiling the machine reaches while others share it, and a
    variant's fraction of it says how much of the matrix units that variant's work keeps busy.
    """
    import torch

    n = n or (8192 if device.startswith("cuda") else 2048)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    a @ b  # warm-up: kernel selection, page faults
    best = float("inf")
    deadline = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < deadline:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return 2 * n ** 3 / best / 1e9


# dense tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity): the denominator
# of model FLOPs utilisation (MFU); fp32 is the CUDA-core rate (matmuls in true fp32)
NOMINAL_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},   # SXM; PCIe is ~756 / 51
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}


def device_line(device: str) -> str:
    """One '# ...' line naming the GPU, its memory and its nominal peak (empty on a CPU)."""
    import torch

    if not device.startswith("cuda"):
        return ""
    props = torch.cuda.get_device_properties(torch.device(device))
    peak = nominal_peak_tflops(device)
    return (f"# gpu: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
            f"CUDA {torch.version.cuda}; nominal dense peak (TFLOP/s): "
            + (", ".join(f"{k} {v}" for k, v in peak.items()) if peak else "unknown (MFU not printed)"))


def nominal_peak_tflops(device: str) -> dict[str, float]:
    """The data-sheet peak of the GPU behind `device`, by name ({} when unknown or a CPU)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return {}
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in NOMINAL_PEAK_TFLOPS.items() if key in name), {})


class MatmulPeak:
    """The best GEMM GFLOP/s seen per precision over this run's measurements.

    Measured at the start and again before each table: under other people's load a single
    measurement can land in a busy moment and make a variant look faster than the peak; the
    best of several is the closest to what the matrix units can do while the run lasts.
    """

    def __init__(self, dtypes: dict, device: str = "cpu"):
        self.dtypes, self.device = dtypes, device
        self.samples: dict[str, list[float]] = {name: [] for name in dtypes}
        self.measure()

    def measure(self) -> None:
        for name, dtype in self.dtypes.items():
            self.samples[name].append(gemm_peak_gflops(dtype, self.device))

    def __getitem__(self, name: str) -> float:
        return max(self.samples[name])

    def describe(self) -> str:
        return ", ".join(f"{name} {self[name]:.1f} GFLOP/s (measurements: "
                         f"{' '.join(f'{v:.0f}' for v in values)})" for name, values in self.samples.items())


def files_under(path: str | Path) -> list[Path]:
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def drop_page_cache(path: str | Path) -> None:
    """Evict every file under `path` from the page cache (written pages are flushed first:
    DONTNEED only drops clean pages)."""
    for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
