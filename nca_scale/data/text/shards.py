"""Packed text token shards: documents + EOS concatenated and cut into rows of seq_len + 1 tokens.

The shard directory follows the NCA shard scheme (docs/data.md): WebDataset tars `SPLIT-NNNNNN.tar` of
consecutive global indices, key = index zero-padded to 12 digits, member `tokens.npy` = (seq_len + 1,)
tokens; a `<shard>.json` record after each shard; `manifest.json` last, listing every shard with its index
range, token count, size and sha256. Row i of a directory is a pure function of (corpus, split, tokenizer,
seq_len, shuffle seed), so training order stays a function of (seed, step).

Packing: documents are read in corpus order, shuffled within windows of `shuffle_window` documents (keyed by
`seed` and the document hashes), encoded, each followed by EOS, concatenated, and cut into rows of
seq_len + 1 tokens (nanoGPT-style blocks); the incomplete tail is dropped and counted (`tokens_dropped`).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
import json
import logging
import os
import tarfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import webdataset as wds

import nca_scale
from nca_scale.data.manifest import read_json_manifest
from nca_scale.data.shards import KEY_DIGITS, MTIME, decode_npy, iter_tar_samples, sha256, shard_name
from nca_scale.data.urls import Location, parse_location
from nca_scale.errors import UserError
from nca_scale.files import NodeCache, replacing, wait_for

log = logging.getLogger(__name__)

FORMAT = "nca_scale.text_shards/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PackConfig:
    seq_len: int = 1024  # rows hold seq_len + 1 tokens: inputs tokens[:-1], targets tokens[1:]
    sequences_per_shard: int = 8192
    seed: int = 0  # document shuffle
    shuffle_window: int = 100_000  # documents shuffled together (a full shuffle for corpora up to this size)
    encode_batch: int = 256  # documents per sentencepiece call
    threads: int = 0  # encoding threads; 0 = all cores
    max_sequences: int | None = None  # stop after this many rows (e.g. a token budget); None = all

    def validate(self) -> None:
        if self.seq_len < 1 or self.sequences_per_shard < 1 or self.encode_batch < 1 or self.shuffle_window < 1:
            raise UserError("seq_len, sequences_per_shard, encode_batch and shuffle_window must be >= 1")
        if self.max_sequences is not None and self.max_sequences < 1:
            raise UserError(f"max_sequences={self.max_sequences} must be >= 1 (or null)")


def _shuffled(docs: Iterator[dict], seed: int, window: int) -> Iterator[dict]:
    def key(d):
        return hashlib.sha256(f"{seed}:{d['sha256']}".encode()).digest()

    buf: list[dict] = []
    for d in docs:
        buf.append(d)
        if len(buf) >= window:
            yield from sorted(buf, key=key)
            buf = []
    yield from sorted(buf, key=key)


def build_tar(indices: range, rows: np.ndarray) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(rows[0]))
    header = header.getvalue()
    out = io.BytesIO()
    with wds.TarWriter(out, encoder=False, mtime=MTIME) as tw:
        tw.tarstream.format = tarfile.USTAR_FORMAT  # see nca_scale.data.shards.build_shard
        for i, row in zip(indices, np.ascontiguousarray(rows)):
            tw.write({"__key__": f"{i:0{KEY_DIGITS}d}", "tokens.npy": header + row.tobytes()})
    return out.getvalue()


def fingerprint(corpus, split: str, tok, cfg: PackConfig) -> str:
    ident = {"format": FORMAT, "corpus": corpus.fingerprint, "split": split, "tokenizer": tok.sha256,
             "pack": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("threads", "encode_batch")}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def read_manifest(loc: Location) -> dict | None:
    return read_json_manifest(loc, MANIFEST, FORMAT, f"not a text shard manifest (format {FORMAT!r}); NCA shards "
                              "are read with data.source=nca_shards")


@dataclasses.dataclass
class _DocStats:
    documents: int = 0
    bytes: int = 0
    tokens: int = 0  # with one EOS per document


def _packed_rows(docs, tok, dtype, row_len: int, cfg: PackConfig, stats: _DocStats):
    """Rows of `row_len` tokens, one list per encoded batch of documents: documents + EOS concatenated and cut;
    the tail that does not fill a row carries over to the next batch. `stats` counts what was encoded."""
    threads = cfg.threads or os.cpu_count() or 1
    pending = np.empty(0, dtype=dtype)
    while batch := [d for _, d in zip(range(cfg.encode_batch), docs)]:
        pieces = [pending]
        for d, ids in zip(batch, tok.encode([d["text"] for d in batch], threads)):
            pieces.append(np.asarray(ids + [tok.eos_id], dtype=dtype))
            stats.documents += 1
            stats.bytes += len(d["text"].encode("utf-8"))
            stats.tokens += len(ids) + 1
        flat = np.concatenate(pieces)
        full = len(flat) // row_len
        pending = flat[full * row_len :]
        yield list(flat[: full * row_len].reshape(full, row_len))


def pack(corpus, split: str, tok, out: str, cfg: PackConfig, *, endpoint_url: str | None = None,
         force: bool = False) -> tuple[dict, bool]:
    """Tokenize and pack `split` of `corpus` into shards at `out`; returns (manifest, cached?)."""
    cfg.validate()
    if corpus.count(split) == 0:
        raise UserError(f"corpus {corpus.name} has no {split} documents")
    loc = parse_location(out, endpoint_url)
    fp = fingerprint(corpus, split, tok, cfg)
    old = read_manifest(loc)
    if old is not None and old.get("fingerprint") == fp and not force:
        return old, True
    if old is not None and not force:
        raise UserError(f"out={loc.url} already holds other shards (different corpus, split, tokenizer or packing); "
                        "choose another out= or pass force=true to replace them")
    loc.check_writable()
    loc.remove_stale_temps()
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 65536 else np.int32)
    row_len = cfg.seq_len + 1
    t0 = time.perf_counter()
    records: list[dict] = []
    stats = _DocStats()

    def commit(rows_: list[np.ndarray]) -> None:
        start = sum(r["sequences"] for r in records)
        arr = np.stack(rows_)
        name = shard_name(split, len(records))
        data = build_tar(range(start, start + len(arr)), arr)
        rec = {"fingerprint": fp, "name": name, "start": start, "stop": start + len(arr), "sequences": len(arr),
               "tokens": int(arr.size), "bytes": len(data), "sha256": sha256(data)}
        loc.put_atomic(name, data)  # retried; a UserError after the last attempt
        loc.put_atomic(f"{name}.json", json.dumps(rec).encode())
        records.append(rec)

    rows: list[np.ndarray] = []
    total, limit, per_shard = 0, cfg.max_sequences, cfg.sequences_per_shard
    docs = _shuffled(corpus.documents(split), cfg.seed, cfg.shuffle_window)
    for batch_rows in _packed_rows(docs, tok, dtype, row_len, cfg, stats):
        if limit is not None:
            batch_rows = batch_rows[: limit - total]
        total += len(batch_rows)
        rows.extend(batch_rows)
        while len(rows) >= per_shard:
            commit(rows[:per_shard])
            rows = rows[per_shard:]
        if limit is not None and total >= limit:
            break  # no more documents are encoded
    while rows:
        commit(rows[:per_shard])
        rows = rows[per_shard:]
    if not records:
        raise UserError(f"{corpus.name}/{split}: {stats.tokens} tokens do not fill one row of seq_len + 1 = "
                        f"{row_len}; lower seq_len or add documents")
    m = _manifest(corpus, split, tok, cfg, fp, dtype, records, stats, time.perf_counter() - t0)
    loc.put_atomic(MANIFEST, json.dumps(m, indent=1).encode())
    listed = {r["name"] for r in records}
    for name in loc.names():  # shards of an earlier run with more data are no longer part of this directory
        base = name[:-5] if name.endswith(".tar.json") else name
        if base.endswith(".tar") and base not in listed:
            loc.fs.rm_file(loc.path(name))
    return m, False


def _manifest(corpus, split: str, tok, cfg: PackConfig, fp: str, dtype, records: list[dict], stats: _DocStats,
              seconds: float) -> dict:
    row_len = cfg.seq_len + 1
    sequences = sum(r["sequences"] for r in records)
    return {
        "format": FORMAT, "package_version": nca_scale.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fingerprint": fp,
        "corpus": {"name": corpus.name, "domain": corpus.domain, "fingerprint": corpus.fingerprint,
                   "url": corpus.loc.url},
        "split": split, "eval_only": split == "eval" or corpus.manifest["splits"][split].get("eval_only", False),
        "tokenizer": tok.describe(), "pack": dataclasses.asdict(cfg),
        "seq_len": cfg.seq_len, "sequence_tokens": row_len, "start": 0, "stop": sequences, "sequences": sequences,
        "sequences_per_shard": cfg.sequences_per_shard,
        "documents": stats.documents, "document_bytes": stats.bytes, "document_tokens": stats.tokens,
        "tokens": sequences * row_len, "tokens_dropped": stats.tokens - sequences * row_len,
        "bytes_per_token": round(stats.bytes / max(stats.tokens, 1), 4),
        "token_dtype": dtype.name, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
        "packing": "documents (window-shuffled) + EOS, concatenated, cut into rows of seq_len + 1; tail dropped",
        "loss_mask": {"inputs": "tokens[:-1]", "targets": "tokens[1:]", "rule": "every target is supervised"},
        "sample": {"key": "global sequence index, zero-padded to 12 digits",
                   "tokens.npy": f"({row_len},) {dtype.name}"},
        "shards": [{k: r[k] for k in ("name", "start", "stop", "sequences", "tokens", "bytes", "sha256")}
                   for r in records],
        "seconds": round(seconds, 2),
    }


class TextShardReader:
    """Rows of a text shard directory by global index, each shard checked (size, sha256, index range) before
    use. `skip_corrupt=True` verifies every shard up front, drops the bad ones (`skipped` names them) and
    renumbers the rest contiguously; otherwise a bad shard raises `UserError` naming it.

    With `node_copies` and several ranks on a node (files.NodeCache), a shard is read and checked once per
    node: the node's first rank writes its verified rows to a node-local .npy named by the shard's sha256, in
    this job's own directory, kept under a size cap and removed at the end (close), and every rank maps that
    file, reading only the rows it asks for."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, skip_corrupt: bool = False,
                 cache_shards: int = 4, node_copies: bool = False):
        cache = NodeCache("text") if node_copies else None  # this job's node-local copies, capped, removed at the end
        self.node = cache if cache is not None and cache.directory is not None else None
        self.loc = parse_location(url, endpoint_url, what="shards")
        m = read_manifest(self.loc)
        if m is None:
            raise UserError(f"{self.loc.url_of(MANIFEST)} does not exist: not a finished text shard directory; "
                            "run `nca-scale corpus tokenize` (an interrupted run leaves no manifest)")
        self.manifest = m
        self.seq_len: int = m["seq_len"]
        self.vocab_size: int = m["vocab_size"]
        self.eval_only: bool = m.get("eval_only", False)
        self.split: str = m["split"]
        self.dtype = np.dtype(m["token_dtype"])
        self.skipped: list[tuple[str, str]] = []
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_shards
        shards = m["shards"]
        if skip_corrupt:
            good = []
            for s in shards:
                try:
                    self._cache_put(s["name"], self._load(s))
                    good.append(s)
                except UserError as e:
                    self.skipped.append((s["name"], str(e)))
            shards = good
        # logical index ranges (contiguous over the kept shards)
        self.shards, self._starts, pos = [], [], 0
        for s in shards:
            self.shards.append({**s, "logical_start": pos})
            self._starts.append(pos)
            pos += s["sequences"]
        self.length = pos

    def __len__(self) -> int:
        return self.length

    @property
    def skipped_sequences(self) -> int:
        by = {s["name"]: s["sequences"] for s in self.manifest["shards"]}
        return sum(by[n] for n, _ in self.skipped)

    def _cache_put(self, name: str, rows: np.ndarray) -> None:
        self._cache[name] = rows
        self._cache.move_to_end(name)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _load(self, s: dict) -> np.ndarray:
        url = self.loc.url_of(s["name"])
        try:
            data = self.loc.read(s["name"])
        except FileNotFoundError:
            raise UserError(f"shard {url} is listed in the manifest but missing") from None
        if len(data) != s["bytes"]:
            raise UserError(f"shard {url} is corrupt: {len(data)} bytes, manifest says {s['bytes']} (truncated?)")
        if sha256(data) != s["sha256"]:
            raise UserError(f"shard {url} is corrupt: sha256 does not match the manifest")
        try:
            samples = list(iter_tar_samples([{"url": url, "stream": io.BytesIO(data)}]))
            keys = [int(x["__key__"]) for x in samples]
            if keys != list(range(s["start"], s["stop"])):
                raise ValueError(f"samples {keys[:1]}..{keys[-1:]} do not match the range {s['start']}..{s['stop']}")
            rows = np.stack([decode_npy(x["tokens.npy"]) for x in samples]).astype(self.dtype, copy=False)
        except Exception as e:
            raise UserError(f"shard {url} is corrupt: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if rows.shape != (s["sequences"], self.seq_len + 1):
            raise UserError(f"shard {url} is corrupt: rows of shape {rows.shape}, expected "
                            f"({s['sequences']}, {self.seq_len + 1})")
        return rows

    def _node_copy(self, s: dict) -> np.ndarray:
        """The shard's rows from this node's verified copy, memory-mapped: made by the node's first rank (from
        `_load`, which checks the shard), waited for by the others."""
        directory, leader = self.node.directory, self.node.leader
        path = directory / f"{s['sha256']}.npy"
        if not path.exists():
            if leader:
                rows = self._load(s)
                with replacing(path) as tmp, open(tmp, "wb") as f:  # a reader never sees a torn file
                    np.save(f, rows)
            else:
                wait_for(path.exists, f"the checked rows of shard {self.loc.url_of(s['name'])} at {path}")
        return np.load(path, mmap_mode="r")

    def shard_rows(self, s: dict) -> np.ndarray:
        if s["name"] not in self._cache:
            self._cache_put(s["name"], self._node_copy(s) if self.node else self._load(s))
        self._cache.move_to_end(s["name"])
        return self._cache[s["name"]]

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        k = bisect.bisect_right(self._starts, index) - 1
        if index < 0 or k < 0 or index >= self.length:
            raise IndexError(f"sequence {index} is not in this dataset (0..{self.length - 1})")
        s = self.shards[k]
        return self.shard_rows(s)[index - s["logical_start"]]

    def prepare(self, indices) -> None:
        """With node copies: the node's first rank makes the copies of the shards holding `indices` (a whole
        global batch, which every rank asks for alike), so no rank waits for a shard its node's first rank
        would only read at a later step."""
        if self.node is not None and self.node.leader:
            used = [self.shards[k] for k in sorted({bisect.bisect_right(self._starts, int(i)) - 1
                                                    for i in np.asarray(indices).reshape(-1)}) if 0 <= k < len(self.shards)]
            for s in used:
                self.shard_rows(s)
            gone = {p.stem for p in self.node.keep({self.node.directory / f"{s['sha256']}.npy" for s in used})}
            for s in self.shards:  # a removed copy is made again when a batch needs it
                if s["sha256"] in gone:
                    self._cache.pop(s["name"], None)

    def close(self) -> None:
        """The node's first rank removes this job's node-local copies."""
        if self.node is not None:
            self.node.close()

    def sequences(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.seq_len + 1), dtype=self.dtype)
        for j, i in enumerate(idx.tolist()):
            out[j] = self[i]
        return out

    def rows(self) -> Iterator[np.ndarray]:
        """Every row in index order."""
        for s in self.shards:
            yield from self.shard_rows(s)
