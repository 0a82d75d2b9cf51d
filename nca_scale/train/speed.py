"""Peak FLOP/s per device, pinned, for MFU. Dense bf16 tensor-core peaks from the vendors' data sheets (the
sheets print the 2:4-sparsity figure, twice these, next to them; the sources are listed in docs/gpu.md);
CPUs get a nominal per-core fp32 peak (2 AVX-512 FMA units x 16 lanes x 2 FLOPs x 3 GHz). And the per-phase
step timer the backends fill (StepPhases)."""

from __future__ import annotations

import logging
import re
import time

import torch

log = logging.getLogger(__name__)

# model names as torch.cuda.get_device_name() spells them ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB",
# "AMD Instinct MI300X"), matched as whole words, the first match wins: variants before their family
GPU_PEAK_BF16 = {
    "GB200": 2500e12,      # GB200 NVL72 data sheet: 5 PFLOPS sparse per GPU
    "B200": 2250e12,       # HGX B200 data sheet: 4.5 PFLOPS sparse
    "GH200": 989e12,       # GH200 Grace Hopper Superchip data sheet: 1,979 TFLOPS sparse (an H100-class GPU)
    "H200 NVL": 835e12,    # H200 data sheet, NVL column: 1,671 TFLOPS sparse
    "H200": 989e12,        # H200 data sheet, SXM: 1,979 TFLOPS sparse
    "H100 NVL": 835e12,    # H100 data sheet, NVL: 1,671 TFLOPS sparse
    "H100 PCIe": 756e12,   # H100 data sheet, PCIe: 1,513 TFLOPS sparse
    "H100": 989e12,        # H100 data sheet, SXM: 1,979 TFLOPS sparse
    "H800 PCIe": 756e12,   # H800 PCIe data sheet: 1,513 TFLOPS sparse (the H100 PCIe's compute)
    "H800": 989e12,        # H800 SXM5 data sheet: 1,979 TFLOPS sparse (the H100 SXM's compute)
    "H20": 148e12,         # H20 data sheet: 148 TFLOPS dense (296 sparse)
    "A100": 312e12,        # A100 data sheet: 312 TFLOPS dense (624 sparse)
    "A800": 312e12,        # A800 data sheet: 312 TFLOPS dense (624 sparse)
    "L40S": 362e12,        # L40S data sheet: 362.05 TFLOPS dense (733 sparse)
    "L4": 121e12,          # L4 data sheet: 242 TFLOPS sparse
    "A10G": 70e12,         # AWS G5 (A10G): 70 TFLOPS bf16 dense
    "MI300X": 1307e12,     # AMD Instinct MI300X data sheet: 1,307.4 TFLOPS dense (2,614.9 sparse)
}
CPU_PEAK_PER_CORE = 192e9


def gpu_peak(name: str) -> float | None:
    """Dense bf16 peak of the GPU called `name`, or None when the table has no entry for it."""
    for key, peak in GPU_PEAK_BF16.items():
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return peak
    return None


def peak_flops_per_rank() -> float | None:
    """Peak FLOP/s of the device this rank computes on (its threads, on a CPU); None for a GPU the table does
    not know, after a warning (MFU is then logged as null)."""
    if not torch.cuda.is_available():
        return CPU_PEAK_PER_CORE * torch.get_num_threads()
    name = torch.cuda.get_device_name()
    peak = gpu_peak(name)
    if peak is None:
        log.warning("no pinned peak FLOP/s for GPU %r: MFU is logged as null; set peak_flops=<dense bf16 FLOP/s "
                    "per GPU> to get it", name)
    return peak


class StepPhases:
    """Host-clock seconds per phase of one train_step (`fwd_bwd_time`, `optimizer_time`), for metrics.jsonl.

    A backend calls start() when the step begins and mark(phase) where a phase ends. It marks only where the
    step already waits for the device (a loss or grad-norm `.item()`), so timing adds no synchronisation on a
    GPU; kernels still queued at a mark are counted in the phase that next waits for them (docs/training.md,
    "Loop, metrics, schedules", says where each backend's boundaries are)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        self.times = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.times[phase] = now - self._last
        self._last = now
