"""Text data preparation as library calls, each a function of a typed options object: build a corpus
(`nca-scale corpus build`) and pack a split into token shards (`nca-scale corpus tokenize`). The CLI parses
key=value into these objects and prints the returned summary line; a sweep calls them directly.
Training a tokenizer is already one: nca_scale.data.text.tokenizer.train_tokenizer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from nca_scale import config as config_io
from nca_scale.errors import UserError


@dataclass(frozen=True)
class BuildJob:
    out: str = ""  # corpus URL; default ~/.cache/nca_scale/corpora/NAME
    downloads: str = ""  # pinned downloads; default ~/.cache/nca_scale/downloads
    force: bool = False  # rebuild even when a finished build with this fingerprint exists
    endpoint_url: str = ""  # S3-compatible endpoint; default $AWS_ENDPOINT_URL


@dataclass(frozen=True)
class TokenizeJob:
    tokenizer: str = ""  # a directory from `nca-scale tokenizer train` (or a .model) (required)
    out: str = ""  # the shard directory: path, file://, s3:// or memory:// (required)
    split: str = "train"  # train | val | eval
    seq_len: int = 1024  # rows hold seq_len + 1 tokens
    tokens: int | None = None  # stop after ceil(tokens / (seq_len + 1)) rows; None = the whole split
    sequences_per_shard: int = 8192  # rows per WebDataset shard
    seed: int = 0  # seed of the row shuffle
    shuffle_window: int = 100_000  # rows shuffled together before writing
    threads: int = 0  # encoding threads; 0 = all cores
    force: bool = False  # rewrite shards that already exist
    endpoint_url: str = ""  # S3-compatible endpoint; default $AWS_ENDPOINT_URL

    def validate(self) -> None:
        if not self.tokenizer:
            raise UserError("tokenizer= is required: a directory from `nca-scale tokenizer train` (or a .model file)")
        if not self.out:
            raise UserError("out= is required: the shard directory (path, file://, s3:// or memory://)")
        if self.split not in ("train", "val", "eval"):
            raise UserError(f"split={self.split} must be train, val or eval")
        if self.tokens is not None and self.tokens < 1:
            raise UserError(f"tokens={self.tokens} must be >= 1")


def build(corpus: str, job: BuildJob, overrides: list[tuple[str, str]] = ()) -> str:
    """Build the corpus (an embedded name or a corpus YAML; `overrides` set keys of its config), or reuse a
    finished build with the same fingerprint. Returns the one-line summary."""
    from nca_scale.data.text import corpus as corpus_mod

    cfg = corpus_mod.resolve(corpus)
    for k, v in overrides:
        cfg = config_io.set_key(cfg, k, v)
    cfg.validate()
    manifest, cached = corpus_mod.build_corpus(
        cfg, job.out or None, downloads=Path(job.downloads).expanduser() if job.downloads else None,
        force=job.force, endpoint_url=job.endpoint_url or None,
    )
    where = job.out or corpus_mod.default_location(cfg.name)
    counts = ", ".join(f"{s} {v['documents']} docs / {v['bytes'] / 1e6:.2f} MB" for s, v in manifest["splits"].items())
    return f"{where}: corpus {cfg.name} ({'cached' if cached else 'built'}): {counts}"


def tokenize(corpus: str, job: TokenizeJob) -> str:
    """Encode one split of a built corpus (an embedded name or a corpus URL) with a trained tokenizer and pack it
    into WebDataset shards + manifest.json at job.out. Returns the one-line summary."""
    from nca_scale.data.text.corpus import Corpus
    from nca_scale.data.text.shards import PackConfig, pack
    from nca_scale.data.text.tokenizer import Tokenizer

    job.validate()
    opened = Corpus.open(corpus, job.endpoint_url or None)
    tok = Tokenizer(job.tokenizer)
    max_seq = None if job.tokens is None else math.ceil(job.tokens / (job.seq_len + 1))
    cfg = PackConfig(seq_len=job.seq_len, sequences_per_shard=job.sequences_per_shard, seed=job.seed,
                     shuffle_window=job.shuffle_window, threads=job.threads, max_sequences=max_seq)
    m, cached = pack(opened, job.split, tok, job.out, cfg, endpoint_url=job.endpoint_url or None, force=job.force)
    short = "" if max_seq is None or m["sequences"] >= max_seq else (
        f"; WARNING: asked for tokens={job.tokens}, the split holds only {m['tokens']}")
    return (f"{job.out}: {opened.name}/{job.split} ({'cached' if cached else 'written'}): {m['documents']} documents, "
            f"{m['document_tokens']} tokens -> {m['sequences']} rows of {m['sequence_tokens']} = {m['tokens']} tokens "
            f"in {len(m['shards'])} shards ({m['tokens_dropped']} dropped; {m['bytes_per_token']} bytes/token){short}")
