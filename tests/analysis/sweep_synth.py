"""A synthetic sweep directory written exactly as the sweep contract says (docs/sweeps.md): per-run
metrics.jsonl (train and eval lines) and one results.jsonl record per finished run, built from those files.

Loss of a stage-2 run after t tokens: L = E + A / N^alpha + C / (t / 1e5)^0.5 + shift(arm) + noise(seed), so
ppl curves fall smoothly, arms differ by a known shift and (seed, arm) pairs by a small known offset."""

from __future__ import annotations

import json
import math
from pathlib import Path

E, A, ALPHA, C = 1.8, 60.0, 0.3, 0.4
SIZES = {"tiny-a": 1_000_000, "tiny-b": 3_000_000, "tiny-c": 10_000_000, "tiny-d": 30_000_000}
SHIFT = {"scratch": 0.0, "nca-50+": -0.03, "nca-30-40": 0.02, "scratch_matched": -0.01}
EVALS = 8
NOISE = 0.004  # loss offset per (seed, arm): seeds differ, and differ between arms


def loss_at(n: int, tokens: float, arm: str, seed: int) -> float:
    return E + A / n**ALPHA + C / math.sqrt(tokens / 1e5) + SHIFT[arm] + NOISE * ((3 * seed + len(arm)) % 5 - 2)


def _write_run(root: Path, name: str, n: int, tokens: int, arm: str, seed: int) -> list[dict]:
    out = root / "runs" / name
    out.mkdir(parents=True)
    curve, lines = [], []
    for k in range(1, EVALS + 1):
        t = tokens * k // EVALS
        loss = loss_at(n, t, arm, seed)
        lines.append({"step": k * 10, "tokens": t, "loss": loss + 0.05, "lr": 1e-3, "grad_norm": 1.0,
                      "tokens_per_s": 1e4, "mfu": 0.01})
        point = {"step": k * 10, "tokens": t, "eval_loss": loss, "eval_ppl": math.exp(loss)}
        lines.append(point)
        curve.append(point)
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return curve


def record(sweep: str, name: str, stage: int, coords: dict, n: int, tokens: int, curve: list[dict],
           stage1_flops: float | None, out: Path) -> dict:
    return {"sweep": sweep, "run": name, "stage": stage, "config_hash": "0" * 64, "code_version": "test",
            "coords": coords, "params": n + 500_000, "non_embedding_params": n, "tokens": tokens,
            "flops": 6.0 * n * tokens, "stage1_flops": stage1_flops, "eval_curve": curve,
            "final": {"eval_loss": curve[-1]["eval_loss"], "eval_ppl": curve[-1]["eval_ppl"]},
            "wall_s": 1.0, "restarts": 0, "out": str(out)}


def arm_label(kind: str, band: str | None) -> str:
    """The sweep engine's arm label as it appears in run names: scratch, nca-b50-t1M, matched-nca-b50-t1M."""
    if kind == "nca":
        return f"nca-b{band.replace('+', '')}-t1M"
    return MATCHED_LABEL if kind == "scratch_matched" else kind


MATCHED_TO = "nca-b50-t1M"
MATCHED_LABEL = f"matched-{MATCHED_TO}"


def write_sweep(root: Path, *, sizes=tuple(SIZES), seeds=(0, 1, 2), arms=tuple(SHIFT), stage2_tokens=2_000_000,
                stage1_tokens=1_000_000, domain="web", name="synth") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for size in sizes:
        n = SIZES[size]
        for seed in seeds:
            for arm in arms:
                kind, _, band = arm.partition("-")
                band = band or None
                pre = kind == "nca"
                label = arm_label(kind, band)
                coords = {"size": size, "arm": kind, "band": band, "stage1_tokens": stage1_tokens if pre else None,
                          "domain": domain, "stage2_tokens": stage2_tokens, "seed": seed, "extra": {}}
                tokens = stage2_tokens
                if kind == "scratch_matched":
                    tokens = stage2_tokens + stage1_tokens  # same N: stage-1 FLOPs as extra language tokens
                    coords["extra"] = {"matched_to": MATCHED_TO}
                if pre:
                    s1 = f"s1-{size}-{label}-s{seed}"
                    s1_curve = _write_run(root, s1, n, stage1_tokens, "scratch", seed)
                    records.append(record(name, s1, 1, {**coords, "domain": None, "stage2_tokens": None}, n,
                                          stage1_tokens, s1_curve, None, root / "runs" / s1))
                run = f"s2-{domain}-{size}-{label}-d{stage2_tokens // 1_000_000}M-s{seed}"
                curve = _write_run(root, run, n, tokens, arm, seed)
                records.append(record(name, run, 2, coords, n, tokens, curve,
                                      6.0 * n * stage1_tokens if pre else None, root / "runs" / run))
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root
