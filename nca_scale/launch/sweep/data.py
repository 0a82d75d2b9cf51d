"""A sweep's text data: for every corpus it trains on (stage-2 domains, text arms), the corpus, its tokenizer and
its train/val token shards, through the library calls of nca_scale.data.text. Each step is skipped when its
output is already there (corpus builds and packs are cached by fingerprint)."""

from __future__ import annotations

import logging
from pathlib import Path

from nca_scale import config
from nca_scale.launch.sweep import spec as sweep_spec
from nca_scale.launch.sweep.plan import Planner

log = logging.getLogger(__name__)


def prepare_data(spec: sweep_spec.SweepSpec, planner: Planner) -> None:
    from nca_scale.data.text import prepare
    from nca_scale.data.text.corpus import Corpus
    from nca_scale.data.text.tokenizer import TokenizerConfig, train_tokenizer

    # (corpus, the corpus whose tokenizer tokenizes it); tokenizers first, so a text arm can share a domain's
    corpora = [(d.corpus_source, None) for d in spec.domains] + [
        (a.corpus, a.tokenizer) for a in spec.arms if a.arm == "text"]
    corpora = sorted(dict.fromkeys(corpora), key=lambda c: c[1] is not None)
    for corpus, tokenizer in corpora:
        name, paths = sweep_spec.corpus_name(corpus), planner.text_paths(corpus, tokenizer)
        log.info(prepare.build(corpus, prepare.BuildJob()))
        if not (Path(paths["tokenizer"]) / "tokenizer.json").is_file():
            source = sweep_spec.corpus_name(tokenizer) if tokenizer else name
            if tokenizer:
                log.info(prepare.build(tokenizer, prepare.BuildJob()))
            cfg = config.load(TokenizerConfig, spec.data.tokenizer, [])
            train_tokenizer([Corpus.open(source)], cfg, paths["tokenizer"])
        for split in ("train", "val"):
            limit = spec.data.val_tokens if split == "val" else spec.data.train_tokens
            job = config.load(prepare.TokenizeJob, None, [
                ("tokenizer", paths["tokenizer"]), ("out", paths[split]), ("split", split),
                ("seq_len", str(spec.seq_len)), *([("tokens", str(limit))] if limit else [])])
            log.info(prepare.tokenize(name, job))
