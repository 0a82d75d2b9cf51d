"""manifest.json and per-shard records: what a shard directory promises to readers (docs/data.md).

A shard directory is published by its manifest, written last and atomically; readers trust only the shards
it lists, each checked against its size and sha256. Each shard also gets a small record `<shard>.json`
written right after it, so an interrupted run can tell complete shards from missing ones without a manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import numpy as np

import nca_scale
from nca_scale import config as config_io
from nca_scale.errors import UserError
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stream import REVISION

FORMAT = "nca_scale.shards/1"
MANIFEST = "manifest.json"
HIST_BINS = 20  # complexity histogram: HIST_BINS equal bins over [0, 1], scores clipped into range


def record_name(shard: str) -> str:
    return f"{shard}.json"


def fingerprint(cfg: NCAConfig, split: str) -> str:
    """Identity of the token stream: equal fingerprints mean index i is the same sequence in both."""
    identity = {"format": FORMAT, "generator": REVISION, "config": dataclasses.asdict(cfg), "split": split}
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def score_histogram(scores: np.ndarray) -> list[int]:
    """HIST_BINS counts over [0, 1] (scores clipped into range), then one more: unscored (NaN) rules."""
    counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))
    return [int(c) for c in counts] + [int(np.isnan(scores).sum())]


def loss_mask_convention(cfg: NCAConfig) -> dict:
    supervised = cfg.seq_len - (cfg.frame_tokens - 1 if cfg.mask_first_frame else 0)
    return {
        "inputs": "tokens[:-1]",
        "targets": "tokens[1:]",
        "mask_first_frame": cfg.mask_first_frame,
        "rule": (
            "target position t (0-based, target = tokens[t+1]) is supervised iff t+1 >= frame_tokens"
            if cfg.mask_first_frame else "every target is supervised"
        ),
        "frame_tokens": cfg.frame_tokens,
        "supervised_targets": supervised,
    }


def build_manifest(
    cfg: NCAConfig, split: str, start: int, stop: int, per_shard: int, tokens_requested: int, records: list[dict]
) -> dict:
    hist = np.sum([r["score_histogram"] for r in records], axis=0).tolist() if records else [0] * (HIST_BINS + 1)
    return {
        "format": FORMAT,
        "package_version": nca_scale.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fingerprint": fingerprint(cfg, split),
        "config": dataclasses.asdict(cfg),
        "seed": cfg.seed,
        "split": split,
        "start": start,
        "stop": stop,
        "sequences": stop - start,
        "sequences_per_shard": per_shard,
        "sequence_tokens": cfg.sequence_tokens,
        "tokens_requested": tokens_requested,
        "tokens": (stop - start) * cfg.sequence_tokens,
        "tokens_rule": "sequences = ceil(tokens_requested / sequence_tokens); tokens = sequences * sequence_tokens",
        "token_dtype": cfg.token_dtype,
        "vocab_size": cfg.vocab_size,
        "loss_mask": loss_mask_convention(cfg),
        "sample": {
            "key": "global sequence index, zero-padded to 12 digits",
            "tokens.npy": f"({cfg.sequence_tokens},) {cfg.token_dtype}",
            "meta.json": '{"index", "bank", "rule" (candidate id), "score" (complexity)}',
        },
        "complexity_histogram": {
            "bins": HIST_BINS, "range": [0.0, 1.0], "clipped": True,
            "counts": [int(c) for c in hist[:HIST_BINS]],
            "unscored": int(hist[HIST_BINS]),  # complexity.lo = null: rules accepted without a score
        },
        "shards": [
            {k: r[k] for k in ("name", "start", "stop", "sequences", "tokens", "bytes", "sha256")} for r in records
        ],
    }


def load_json_manifest(data: bytes, where: str, fmt: str, not_ours: str) -> dict:
    """A JSON manifest's contents, checked to be of format `fmt`; `not_ours` completes the error for a
    readable manifest of another kind."""
    try:
        m = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: manifest is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != fmt:
        raise UserError(f"{where}: {not_ours}")
    return m


def read_json_manifest(loc, name: str, fmt: str, not_ours: str) -> dict | None:
    """The JSON manifest `name` under `loc`, or None when there is none."""
    try:
        raw = loc.read(name)
    except FileNotFoundError:
        return None
    return load_json_manifest(raw, loc.url_of(name), fmt, not_ours)


def parse_manifest(data: bytes, where: str) -> dict:
    m = load_json_manifest(data, where, FORMAT, f"not an nca_scale shard manifest (expected format {FORMAT!r})")
    missing = [k for k in ("config", "split", "start", "stop", "shards", "token_dtype") if k not in m]
    if missing:
        raise UserError(f"{where}: manifest lacks {', '.join(missing)}")
    return m


def config_of(m: dict, where: str) -> NCAConfig:
    cfg = config_io.from_dict(NCAConfig, m["config"], source=where)
    cfg.validate()
    return cfg
