"""`nca-scale nca match`: corpus windows scored exactly like NCA probes (int32 LE, gzip 9) and the closest band.

Two small corpora built by the real corpus builder from JSONL written here: a repetitive one (one English
sentence over and over) and a dense one (random CJK characters: three high-entropy UTF-8 bytes each)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random

import numpy as np
import pytest

from nca_scale.cli import main
from nca_scale.data.text import complexity as tc
from nca_scale.data.text.corpus import Corpus, CorpusConfig, SourceConfig, build_corpus
from nca_scale.data.text.tokenizer import _sample
from nca_scale.nca.complexity import BANDS
from nca_scale.nca.config import NCAConfig


def _corpus(tmp_path, name: str, texts: list[str]) -> str:
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = CorpusConfig(name, "test", [SourceConfig(files=[str(src)], min_chars=1)], val_fraction=0.0)
    out = tmp_path / name
    build_corpus(cfg, str(out), downloads=tmp_path / "dl")
    return str(out)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("match")
    rng = random.Random(0)
    repetitive = [f"doc {i}: " + "the cat sat on the mat. " * 120 for i in range(20)]
    dense = ["".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(1000)) for _ in range(20)]
    return {"repetitive": _corpus(tmp, "repetitive", repetitive), "dense": _corpus(tmp, "dense", dense)}


def test_window_size_follows_the_probe():
    assert tc.probe_tokens(NCAConfig()) == 10 * 36  # the reference: 10 frames of 6x6 patches
    cfg = NCAConfig()
    cfg = dataclasses.replace(cfg, complexity=dataclasses.replace(cfg.complexity, probe_frames=5))
    assert tc.probe_tokens(cfg) == 5 * 36


def test_scores_are_gzip9_of_int32_windows(corpora):
    corpus = Corpus(corpora["dense"])
    rows = tc.token_windows(_sample(corpus, 10**6), None, 360, 40)
    assert rows.shape == (40, 360)
    scores = tc.corpus_scores(corpus, None, 360, 40, 10**6)
    for row, s in zip(rows, scores):
        raw = row.astype("<i4").tobytes()
        assert len(raw) == 1440
        assert s == pytest.approx(len(gzip.compress(raw, compresslevel=9, mtime=0)) / 1440, abs=1e-12)


def test_wasserstein_of_a_shift_is_the_shift():
    a = np.random.default_rng(0).normal(size=500)
    assert tc.wasserstein1(a, a + 0.3) == pytest.approx(0.3, abs=1e-9)


def test_match_cli_ranks_corpora_and_recommends_the_closest_band(corpora, capsys):
    results = {}
    for name, url in corpora.items():
        assert main(["nca", "match", url, "tokenizer=bytes", "rules=300", "windows=60"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    for r in results.values():
        assert r["window_tokens"] == 360 and r["window_bytes"] == 1440 and r["windows"] == 60
        assert r["tokenizer"] == "bytes" and r["rules"] == 300 and "caveat" in r and "method" in r
        distances = {k: v["distance"] for k, v in r["bands"].items() if v["distance"] is not None}
        assert r["recommended"] == min(distances, key=distances.get)
        assert sum(v["rules"] for v in r["bands"].values()) <= 300
    rep, dense = results["repetitive"], results["dense"]
    assert rep["corpus_score"]["quantiles"]["50"] < 0.1 < dense["corpus_score"]["quantiles"]["50"]
    order = list(BANDS)
    assert order.index(rep["recommended"]) < order.index(dense["recommended"])
    assert rep["recommended"] == "20-30" and rep["median_in_band"] is None  # below every band: nearest is lowest


def test_match_errors_are_one_line(corpora, capsys):
    for args, words in (([corpora["dense"]], "tokenizer= is required"),
                        ([], "exactly one CORPUS"),
                        ([corpora["dense"], "tokenizer=bytes", "rules=5"], "rules >= 100")):
        assert main(["nca", "match", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err
