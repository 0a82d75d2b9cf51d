"""nca-scale corpus build|list|tokenize: text corpora for transfer and the text pre-pre-training baseline.

  nca-scale corpus build NAME|CORPUS.yaml [out=URL] [downloads=DIR] [force=true] [key=value ...]
      Build an embedded corpus (web, math, code) or one described by a YAML file (configs/corpus/) into
      out= (default ~/.cache/nca_scale/corpora/NAME; $NCA_SCALE_CACHE moves the cache). Pinned downloads go
      to downloads= (default ~/.cache/nca_scale/downloads). A finished build with the same fingerprint is
      reused; an interrupted one is rebuilt. Other key=value pairs override the corpus config
      (e.g. val_fraction=0.1).
  nca-scale corpus list
      The embedded corpora, their sources and whether they are built.
  nca-scale corpus tokenize CORPUS tokenizer=DIR out=URL [split=train|val|eval] [seq_len=1024]
                    [tokens=N] [sequences_per_shard=8192] [seed=0] [shuffle_window=100000] [threads=0] [force=true]
      Encode one split of a built corpus (an embedded name or a corpus URL) with a trained tokenizer, pack
      documents + EOS into rows of seq_len + 1 tokens and write WebDataset shards + manifest.json to out=.
      tokens=N stops after ceil(N / (seq_len + 1)) rows (match the NCA arm's token budget).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields

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


def _split(cls, overrides):
    names = {f.name for f in fields(cls)}
    mine = [(k, v) for k, v in overrides if k.split(".")[0] in names]
    rest = [(k, v) for k, v in overrides if k.split(".")[0] not in names]
    return config_io.load(cls, None, mine), rest


def build(args: list[str]) -> int:
    from pathlib import Path

    from nca_scale.data.text import corpus as corpus_mod

    positional, overrides = config_io.split_overrides(args)
    if len(positional) != 1:
        raise UserError(f"usage: nca-scale corpus build NAME|CORPUS.yaml [key=value ...]; embedded corpora: "
                        f"{', '.join(corpus_mod.DEFAULTS)}")
    job, rest = _split(BuildJob, overrides)
    cfg = corpus_mod.resolve(positional[0])
    for k, v in rest:
        cfg = config_io.set_key(cfg, k, v)
    cfg.validate()
    manifest, cached = corpus_mod.build_corpus(
        cfg, job.out or None, downloads=Path(job.downloads).expanduser() if job.downloads else None,
        force=job.force, endpoint_url=job.endpoint_url or None,
    )
    where = job.out or corpus_mod.default_location(cfg.name)
    counts = ", ".join(f"{s} {v['documents']} docs / {v['bytes'] / 1e6:.2f} MB" for s, v in manifest["splits"].items())
    print(f"{where}: corpus {cfg.name} ({'cached' if cached else 'built'}): {counts}")
    return 0


def list_(args: list[str]) -> int:
    from pathlib import Path

    from nca_scale.data.text import corpus as corpus_mod

    for name, cfg in corpus_mod.DEFAULTS.items():
        built = (Path(corpus_mod.default_location(name)) / corpus_mod.MANIFEST).is_file()
        srcs = ", ".join(s.label + (" (eval only)" if s.eval_only else "") for s in cfg.sources)
        print(f"{name:<6} {cfg.domain:<5} {'built' if built else 'not built':<9} {srcs}")
    return 0


def tokenize(args: list[str]) -> int:
    from nca_scale.data.text.corpus import Corpus
    from nca_scale.data.text.shards import PackConfig, pack
    from nca_scale.data.text.tokenizer import Tokenizer

    positional, overrides = config_io.split_overrides(args)
    if len(positional) != 1:
        raise UserError("usage: nca-scale corpus tokenize CORPUS tokenizer=DIR out=URL [split=train] [seq_len=1024]")
    job = config_io.load(TokenizeJob, None, overrides)
    corpus = Corpus.open(positional[0], job.endpoint_url or None)
    tok = Tokenizer(job.tokenizer)
    max_seq = None if job.tokens is None else math.ceil(job.tokens / (job.seq_len + 1))
    cfg = PackConfig(seq_len=job.seq_len, sequences_per_shard=job.sequences_per_shard, seed=job.seed,
                     shuffle_window=job.shuffle_window, threads=job.threads, max_sequences=max_seq)
    m, cached = pack(corpus, job.split, tok, job.out, cfg, endpoint_url=job.endpoint_url or None, force=job.force)
    short = "" if max_seq is None or m["sequences"] >= max_seq else (
        f"; WARNING: asked for tokens={job.tokens}, the split holds only {m['tokens']}")
    print(f"{job.out}: {corpus.name}/{job.split} ({'cached' if cached else 'written'}): {m['documents']} documents, "
          f"{m['document_tokens']} tokens -> {m['sequences']} rows of {m['sequence_tokens']} = {m['tokens']} tokens in "
          f"{len(m['shards'])} shards ({m['tokens_dropped']} dropped; {m['bytes_per_token']} bytes/token){short}",
          file=sys.stdout)
    return 0


build.__doc__ = list_.__doc__ = tokenize.__doc__ = __doc__
