"""Packed text shards: token counts in the manifest equal what the shards hold, rows are documents + EOS in a
seeded order, random access by global index, determinism, corrupt shards named (or skipped and counted)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from nca_scale.data.text.shards import PackConfig, TextShardReader, pack
from nca_scale.errors import UserError

CFG = PackConfig(seq_len=127, sequences_per_shard=64, threads=2)


@pytest.fixture(scope="module")
def val_shards(code_corpus, code_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "code-val"
    m, cached = pack(code_corpus, "val", code_tokenizer, str(out), CFG)
    assert not cached
    return out


def test_counts_match_content(val_shards, code_corpus, code_tokenizer):
    m = json.loads((val_shards / "manifest.json").read_text())
    r = TextShardReader(str(val_shards))
    rows = np.stack(list(r.rows()))
    assert rows.shape == (m["sequences"], CFG.seq_len + 1) and len(r) == m["sequences"] == m["stop"]
    assert m["tokens"] == rows.size == sum(s["tokens"] for s in m["shards"])
    assert sum(s["sequences"] for s in m["shards"]) == m["sequences"]
    assert len(m["shards"]) > 1 and all(s["sequences"] == 64 for s in m["shards"][:-1])
    texts = list(code_corpus.texts("val"))
    assert m["documents"] == len(texts) == code_corpus.count("val")
    assert m["document_bytes"] == sum(len(t.encode()) for t in texts)
    encoded = code_tokenizer.encode(texts)
    assert m["document_tokens"] == sum(len(x) + 1 for x in encoded)
    assert m["document_tokens"] == m["tokens"] + m["tokens_dropped"] and 0 <= m["tokens_dropped"] < CFG.seq_len + 1
    # the rows are the documents, each followed by EOS, in the seeded order, cut into rows
    flat = rows.reshape(-1).astype(np.int64)
    assert (flat == code_tokenizer.eos_id).sum() in (len(texts), len(texts) - 1)
    pieces = np.split(flat, np.flatnonzero(flat == code_tokenizer.eos_id) + 1)
    decoded = [code_tokenizer.decode(p[:-1]) for p in pieces if len(p) and p[-1] == code_tokenizer.eos_id]
    assert len(set(decoded)) == len(decoded) >= len(texts) - 1
    order = [d["sha256"] for d in code_corpus.documents("val")]
    seeded = sorted(order, key=lambda h: hashlib.sha256(f"{CFG.seed}:{h}".encode()).digest())
    want = {hashlib.sha256(t.encode()).hexdigest(): t for t in texts}
    assert decoded == [want[h] for h in seeded[: len(decoded)]]
    assert m["eval_only"] is False and m["split"] == "val" and m["vocab_size"] == code_tokenizer.vocab_size


def test_random_access(val_shards):
    r = TextShardReader(str(val_shards), cache_shards=1)
    rows = np.stack(list(r.rows()))
    idx = np.array([len(r) - 1, 0, 65, 3, 64, 63])
    assert np.array_equal(r.sequences(idx), rows[idx])
    with pytest.raises(IndexError):
        r[len(r)]


def test_deterministic_cached_and_seeded(val_shards, code_corpus, code_tokenizer, tmp_path):
    m1 = json.loads((val_shards / "manifest.json").read_text())
    m2, _ = pack(code_corpus, "val", code_tokenizer, str(tmp_path / "a"), CFG)
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    _, cached = pack(code_corpus, "val", code_tokenizer, str(tmp_path / "a"), CFG)
    assert cached
    other = PackConfig(seq_len=127, sequences_per_shard=64, seed=1)
    with pytest.raises(UserError, match="already holds other shards"):
        pack(code_corpus, "val", code_tokenizer, str(tmp_path / "a"), other)
    m3, _ = pack(code_corpus, "val", code_tokenizer, str(tmp_path / "a"), other, force=True)
    assert m3["shards"][0]["sha256"] != m1["shards"][0]["sha256"]
    assert m3["tokens"] == m1["tokens"]  # same documents, another order


def test_token_budget_and_memory_url(code_corpus, code_tokenizer):
    cfg = PackConfig(seq_len=63, sequences_per_shard=100, max_sequences=250, encode_batch=8)
    m, _ = pack(code_corpus, "train", code_tokenizer, "memory://text-budget", cfg)
    assert m["sequences"] == 250 and [s["sequences"] for s in m["shards"]] == [100, 100, 50]
    r = TextShardReader("memory://text-budget")
    assert r.sequences([249]).shape == (1, 64)


def test_eval_split_is_marked(code_corpus, code_tokenizer, tmp_path):
    m, _ = pack(code_corpus, "eval", code_tokenizer, str(tmp_path), PackConfig(seq_len=63))
    assert m["eval_only"] is True and TextShardReader(str(tmp_path)).eval_only


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"is corrupt: \d+ bytes, manifest says \d+ \(truncated\?\)"),
    ("flip", "is corrupt: sha256 does not match the manifest"),
    ("delete", "is listed in the manifest but missing"),
])
def test_corrupt_shard_named_or_skipped(val_shards, tmp_path, damage, message):
    d = tmp_path / "s"
    shutil.copytree(val_shards, d)
    victim = d / "val-000001.tar"
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        victim.write_bytes(data[:700] + bytes([data[700] ^ 1]) + data[701:])
    else:
        victim.unlink()
    r = TextShardReader(str(d))
    r.sequences([0])  # shard 0 is fine
    with pytest.raises(UserError, match=rf"^shard \S*/val-000001\.tar {message}$"):
        r.sequences([64])
    good = TextShardReader(str(val_shards))
    skip = TextShardReader(str(d), skip_corrupt=True)
    assert [n for n, _ in skip.skipped] == ["val-000001.tar"] and skip.skipped_sequences == 64
    assert len(skip) == len(good) - 64
    assert np.array_equal(skip.sequences([63, 64]), good.sequences([63, 128]))


def test_missing_manifest(tmp_path):
    with pytest.raises(UserError, match="corpus tokenize"):
        TextShardReader(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "nca_scale.shards/1"}))
    with pytest.raises(UserError, match="not a text shard manifest"):
        TextShardReader(str(tmp_path))
