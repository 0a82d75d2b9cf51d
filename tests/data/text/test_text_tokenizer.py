"""Tokenizers: exact round trip on all three embedded corpora (and awkward strings), EOS, per-domain and
shared vocabularies, and clear errors."""

from __future__ import annotations

import itertools

import pytest

from nca_scale.data.text.tokenizer import EOS_ID, Tokenizer, TokenizerConfig, train_tokenizer
from nca_scale.errors import UserError

AWKWARD = [
    "def f(x):\n\tif x:\n        return x  # tab, 8 spaces\r\n",
    "  leading spaces and trailing  ",
    "émigré naïve — “quotes” ½ ∑_{i=1}^n i² = n(n+1)/2 日本語 🙂 \u200b",
    "$\\frac{a}{b}$ \\[ \\int_0^1 x\\,dx \\]",
    "\n\n\nblank lines\n\n",
    "1234567890 3.14159e-10 0x1F",
]


@pytest.mark.parametrize("name", ["code", "web", "math"])
def test_round_trip(corpora, tokenizers, name):
    tok = tokenizers[name]
    c = corpora[name]
    texts = list(c.texts("val")) + list(c.texts("eval")) + list(itertools.islice(c.texts("train"), 200))
    texts += AWKWARD
    encoded = tok.encode(texts, threads=2)
    bad = [t for t, ids in zip(texts, encoded) if tok.decode(ids) != t]
    assert not bad, f"{len(bad)} of {len(texts)} documents do not round-trip, e.g. {bad[0][:200]!r}"
    assert all(0 <= i < tok.vocab_size for ids in encoded for i in ids)
    assert not any(EOS_ID in ids for ids in encoded)  # EOS is only ever added between documents
    assert tok.vocab_size == 1000 and tok.eos_id == EOS_ID


def test_compression_is_sane(corpora, tokenizers):
    # a real subword vocabulary, not byte fallback everywhere: > 2 bytes per token even at 1000 pieces
    for name in ("code", "web", "math"):
        texts = list(corpora[name].texts("val"))
        n_tokens = sum(len(x) for x in tokenizers[name].encode(texts, threads=2))
        assert sum(len(t.encode()) for t in texts) / n_tokens > 2.0, name


def test_shared_tokenizer(corpora, tmp_path):
    cfg = TokenizerConfig(vocab_size=1200, max_train_bytes=1_500_000, threads=2)
    meta = train_tokenizer(list(corpora.values()), cfg, str(tmp_path))
    assert [c["name"] for c in meta["corpora"]] == ["code", "web", "math"]
    tok = Tokenizer(str(tmp_path))
    for c in corpora.values():
        texts = list(itertools.islice(c.texts("val"), 30))
        assert [tok.decode(ids) for ids in tok.encode(texts)] == texts
    # the same bytes from the bare model file, and training is deterministic
    assert Tokenizer(str(tmp_path / "tokenizer.model")).sha256 == tok.sha256
    train_tokenizer(list(corpora.values()), cfg, str(tmp_path / "again"))
    assert Tokenizer(str(tmp_path / "again")).sha256 == tok.sha256


def test_errors(tmp_path, code_corpus):
    with pytest.raises(UserError, match="no tokenizer at .*tokenizer train"):
        Tokenizer(str(tmp_path / "none"))
    with pytest.raises(UserError, match="byte fallback needs"):
        TokenizerConfig(vocab_size=100).validate()
    with pytest.raises(UserError, match="sentencepiece training failed"):
        train_tokenizer([code_corpus], TokenizerConfig(vocab_size=60000, max_train_bytes=20_000), str(tmp_path / "t"))
