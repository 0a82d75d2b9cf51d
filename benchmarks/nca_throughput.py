"""NCA generator throughput: tokens/s on CPU (1 and 2 threads), unfiltered and with the paper's 50%+ gzip band,
and on CUDA when present. Prints one JSON object. Medians of `--repeats` runs measured in this one process.

Steady state = sequences generated from an already-scored bank prefix (what a long run sees); bank scoring is
reported separately as seconds per 1,000 accepted rules, since the release draws one bank per run.
End to end = `write_shards` (what `nca-scale generate` runs): bank scoring, generation, tar building in a
worker process, sha256 and atomic commits to a local directory, manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from nca_scale import config
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stream import NCAStream


def steady_state(cfg: NCAConfig, device: str, threads: int, sequences: int, batch: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    stream = NCAStream(cfg, device=device, batch_size=batch, threads=threads)
    t0 = time.perf_counter()
    stream.bank(0).ensure(sequences)
    bank_s = time.perf_counter() - t0
    accepted = min(sequences, stream.bank_size)
    idx = np.arange(sequences)
    stream.sequences(idx[: min(batch, sequences)])  # warm-up: caches, allocator, CUDA context
    rates, cpu_rates = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        stream.sequences(idx)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(sequences * cfg.sequence_tokens / (time.perf_counter() - t))
        cpu_rates.append(sequences * cfg.sequence_tokens / (time.process_time() - c))
    return {
        "tokens_per_s": statistics.median(rates),
        "runs": [round(r) for r in rates],
        # tokens per CPU-second of this process: less sensitive than wall time to other load on the machine
        "tokens_per_cpu_s": statistics.median(cpu_rates),
        "bank_s_per_1000_rules": 1000 * bank_s / accepted,
        "acceptance": stream.bank(0).acceptance,
    }


def end_to_end(cfg: NCAConfig, threads: int, tokens: int) -> dict:
    from nca_scale.data.urls import parse_location
    from nca_scale.data.writer import write_shards

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        loc = parse_location(os.path.join(tmp, "shards"))
        loc.check_writable()  # creates the directory, as `nca-scale generate` does
        t = time.perf_counter()
        result = write_shards(cfg, loc, tokens=tokens, threads=threads, progress=False, tar_workers=1)
        seconds = time.perf_counter() - t
    return {"tokens": result.written_tokens, "seconds": seconds, "tokens_per_s": result.written_tokens / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/nca/paper.yaml")
    ap.add_argument("--sequences", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cuda-sequences", type=int, default=65536)
    ap.add_argument("--e2e-tokens", type=int, default=8_000_000, help="tokens for the end-to-end runs (0: skip)")
    args = ap.parse_args()

    filtered = config.load(NCAConfig, args.config)
    unfiltered = config.load(NCAConfig, args.config, [("complexity.lo", "null")])
    result = {
        "benchmark": "nca_throughput",
        "config": args.config,
        "sequence_tokens": filtered.sequence_tokens,
        "sequences": args.sequences,
        "batch": args.batch,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cpu_results": {},
    }
    for threads in (1, 2):
        for name, cfg in (("unfiltered", unfiltered), ("gzip_50plus", filtered)):
            key = f"{name}_threads{threads}"
            result["cpu_results"][key] = steady_state(cfg, "cpu", threads, args.sequences, args.batch, args.repeats)
    if args.e2e_tokens:
        result["end_to_end_gzip_50plus"] = {
            f"threads{threads}": end_to_end(filtered, threads, args.e2e_tokens) for threads in (1, 2)
        }
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name()
        result["cuda_results"] = {
            name: steady_state(cfg, "cuda", 1, args.cuda_sequences, 16384, args.repeats)
            for name, cfg in (("unfiltered", unfiltered), ("gzip_50plus", filtered))
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
