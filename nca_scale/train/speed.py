"""Peak FLOP/s per device, pinned, for MFU. Dense bf16 tensor-core peaks from the vendors' data sheets
(no sparsity); CPUs get a nominal per-core fp32 peak (2 AVX-512 FMA units x 16 lanes x 2 FLOPs x 3 GHz)."""

from __future__ import annotations

import torch

GPU_PEAK_BF16 = {  # substring of torch.cuda.get_device_name() -> FLOP/s
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "B200": 2250e12,
    "GB200": 2500e12,
}
CPU_PEAK_PER_CORE = 192e9


def peak_flops_per_rank() -> float:
    """Peak FLOP/s of the device this rank computes on (its threads, on a CPU)."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak
        raise KeyError(f"no pinned peak FLOP/s for GPU {name!r}; set peak_flops=")
    return CPU_PEAK_PER_CORE * torch.get_num_threads()
