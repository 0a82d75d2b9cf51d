"""`nca-scale nca stats` and `nca-scale nca show`: look at the complexity of random rules."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from nca_scale.cli.common import parse_job
from nca_scale.errors import UserError
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.device import check_device


def _check_threads(threads: int) -> None:
    if threads < 1:
        raise UserError(f"threads={threads} must be >= 1")


@contextmanager
def _torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rule", file=sys.stderr, leave=False, dynamic_ncols=True)


@dataclass(frozen=True)
class StatsJob:
    rules: int = 4000  # random candidate rules to score
    threads: int = 2  # torch threads and gzip worker threads
    device: str = "cpu"  # cpu | cuda | cuda:N

    def validate(self) -> None:
        if self.rules < 1:
            raise UserError(f"rules={self.rules} must be >= 1 (how many random rules to score, e.g. rules=4000)")
        _check_threads(self.threads)
        check_device(self.device)


def stats(args: list[str]) -> int:
    """nca-scale nca stats [CONFIG.yaml] [rules=4000] [threads=2] [device=cpu] [NCA key=value ...]

    Scores `rules` random candidate rules (the candidates a rule bank draws from, whatever the config's
    band) on their probe trajectory and prints one JSON line: {"rules", "quantiles" (percent -> score),
    "accepted" (band -> fraction of rules with lo < score < hi), "seconds"}. Progress goes to stderr.
    """
    from nca_scale.nca.stats import random_rule_scores, summarize

    job, cfg, _ = parse_job(StatsJob, NCAConfig, args)
    t0 = time.perf_counter()
    with _torch_threads(job.threads), _bar(job.rules, "scoring random rules") as bar:
        scores = random_rule_scores(cfg, job.rules, device=job.device, threads=job.threads, on_chunk=bar.update)
    result = summarize(scores)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


@dataclass(frozen=True)
class ShowJob:
    out: str = ""  # output directory (required)
    per_band: int = 4  # trajectories shown per complexity band
    frames: int = 0  # frames per trajectory; 0 = the config's training frames (27 for paper.yaml)
    rules: int = 4000  # most random candidates scanned for band examples
    threads: int = 2  # torch threads and gzip worker threads
    device: str = "cpu"  # cpu | cuda | cuda:N

    def validate(self) -> None:
        if not self.out:
            raise UserError("out= is required: the directory for the figures, e.g. out=figures/nca")
        if not 1 <= self.per_band <= 16:
            raise UserError(f"per_band={self.per_band} must be between 1 and 16")
        if self.frames != 0 and self.frames < 2:
            raise UserError(f"frames={self.frames} must be >= 2 (or 0 for the config's training frames)")
        if self.rules < 1:
            raise UserError(f"rules={self.rules} must be >= 1 (most random rules scanned for examples)")
        _check_threads(self.threads)
        check_device(self.device)


def show(args: list[str]) -> int:
    """nca-scale nca show [CONFIG.yaml] out=DIR [per_band=4] [frames=0] [rules=4000] [NCA key=value ...]

    Writes into DIR (atomically: complete or not at all): band_<band>.png (frames over time of `per_band`
    random rules per complexity band), band_<band>.gif (the same, animated), score_histogram.png (probe
    scores of the scanned random rules with band edges) and index.json (files, rule ids and scores).
    """
    from nca_scale.analysis.nca_figures import check_out, make_show

    job, cfg, path = parse_job(ShowJob, NCAConfig, args)
    check_out(Path(job.out))
    with _torch_threads(job.threads), _bar(job.rules, "scanning random rules") as bar:
        index = make_show(
            cfg, job.out, per_band=job.per_band, frames=job.frames or None, max_rules=job.rules,
            threads=job.threads, device=job.device, config_path=path, on_chunk=bar.update,
        )
    for band, entry in index["bands"].items():
        if len(entry["rules"]) < job.per_band:
            print(
                f"nca-scale: warning: band {band} had {len(entry['rules'])} of {job.per_band} rules in "
                f"{index['scanned']} random candidates; raise rules= to scan more",
                file=sys.stderr,
            )
    print(f"wrote {len(index['files'])} files to {job.out} ({index['scanned']} rules scanned)")
    return 0


@dataclass(frozen=True)
class MatchJob:
    tokenizer: str = ""  # the stage-2 tokenizer directory (or .model), or "bytes" for UTF-8 bytes (required)
    nca: str = ""  # NCA config whose probe and rules are compared (default: the built-in defaults)
    windows: int = 2000  # corpus windows scored
    max_bytes: int = 4_000_000  # text drawn from the corpus's train split (documents chosen by hash)
    rules: int = 2000  # random candidate rules scored for the band distributions
    threads: int = 2  # torch threads and gzip worker threads
    device: str = "cpu"  # cpu | cuda | cuda:N

    def validate(self) -> None:
        if not self.tokenizer:
            raise UserError("tokenizer= is required: the tokenizer the corpus is trained with (a directory from "
                            "`nca-scale tokenizer train`), or tokenizer=bytes for UTF-8 bytes")
        if self.windows < 10 or self.rules < 100 or self.max_bytes < 1:
            raise UserError("windows must be >= 10, rules >= 100 and max_bytes >= 1")
        _check_threads(self.threads)
        check_device(self.device)


def match(args: list[str]) -> int:
    """nca-scale nca match CORPUS tokenizer=DIR|bytes [nca=CONFIG.yaml] [windows=2000] [max_bytes=4000000]
    [rules=2000] [NCA key=value ...]

    Scores the corpus (an embedded name or a built corpus URL) the way the NCA filter scores rules: windows of
    as many tokens as the NCA probe (360 for the reference), as int32 little-endian bytes, gzip level 9,
    compressed / raw size; scores `rules` random rules of the NCA config, and prints one JSON line: corpus
    score quantiles, each band's in-band rule scores and 1-Wasserstein distance to the corpus, the recommended
    (closest) band, and the method with its caveat (docs/analysis.md).
    """
    from nca_scale import config
    from nca_scale.data.text import complexity as tc
    from nca_scale.data.text.corpus import Corpus
    from nca_scale.data.text.tokenizer import Tokenizer
    from nca_scale.nca.stats import random_rule_scores

    positional, overrides = config.split_overrides(args)
    if len(positional) != 1:
        raise UserError("expected exactly one CORPUS (web, math, code, or a built corpus directory/URL)")
    job_fields = set(MatchJob.__dataclass_fields__)
    job = config.load(MatchJob, None, [(k, v) for k, v in overrides if k in job_fields])
    cfg = config.load(NCAConfig, job.nca or None, [(k, v) for k, v in overrides if k.split(".")[0] not in job_fields])
    corpus = Corpus.open(positional[0])
    tokenizer = None if job.tokenizer == tc.BYTES else Tokenizer(job.tokenizer)
    window = tc.probe_tokens(cfg)
    t0 = time.perf_counter()
    scores = tc.corpus_scores(corpus, tokenizer, window, job.windows, job.max_bytes, job.threads)
    with _torch_threads(job.threads), _bar(job.rules, "scoring random rules") as bar:
        rule_scores = random_rule_scores(cfg, job.rules, device=job.device, threads=job.threads, on_chunk=bar.update)
    result = {
        "corpus": {"name": corpus.name, "domain": corpus.domain, "url": corpus.loc.url},
        "tokenizer": tc.BYTES if tokenizer is None else tokenizer.describe(),
        "window_tokens": window, "window_bytes": 4 * window, "windows": int(scores.size),
        "corpus_score": {"mean": round(float(scores.mean()), 6), "quantiles": tc.quantiles(scores)},
        "rules": int(rule_scores.size), "nca_config": job.nca or "defaults", "seed": cfg.seed,
        **tc.recommend(scores, rule_scores),
        "method": ("windows of window_tokens corpus tokens (documents + end-of-document id, concatenated, "
                   "non-overlapping, evenly spaced) and the NCA probe's patch tokens, each as int32 little-endian "
                   "bytes, gzip level 9, score = compressed/raw; recommended = band whose in-band random-rule "
                   "scores are closest to the corpus scores in 1-Wasserstein distance"),
        "caveat": ("text token ids and NCA patch ids are different alphabets: the corpus score depends on the "
                   "tokenizer, and equal scores mean equal gzip redundancy per int32 symbol, not equal structure; "
                   "compare corpora under one tokenizer and test the band as a sweep axis"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0
