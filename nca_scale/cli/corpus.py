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

from dataclasses import fields

from nca_scale import config as config_io
from nca_scale.errors import UserError


def _split(cls, overrides):
    names = {f.name for f in fields(cls)}
    mine = [(k, v) for k, v in overrides if k.split(".")[0] in names]
    rest = [(k, v) for k, v in overrides if k.split(".")[0] not in names]
    return config_io.load(cls, None, mine), rest


def build(args: list[str]) -> int:
    from nca_scale.data.text import corpus as corpus_mod
    from nca_scale.data.text import prepare

    positional, overrides = config_io.split_overrides(args)
    if len(positional) != 1:
        raise UserError(f"usage: nca-scale corpus build NAME|CORPUS.yaml [key=value ...]; embedded corpora: "
                        f"{', '.join(corpus_mod.DEFAULTS)}")
    job, rest = _split(prepare.BuildJob, overrides)
    print(prepare.build(positional[0], job, rest))
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
    from nca_scale.data.text import prepare

    positional, overrides = config_io.split_overrides(args)
    if len(positional) != 1:
        raise UserError("usage: nca-scale corpus tokenize CORPUS tokenizer=DIR out=URL [split=train] [seq_len=1024]")
    print(prepare.tokenize(positional[0], config_io.load(prepare.TokenizeJob, None, overrides)))
    return 0


build.__doc__ = list_.__doc__ = tokenize.__doc__ = __doc__
