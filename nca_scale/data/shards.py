"""The shard format: one WebDataset tar per run of consecutive sequence indices (docs/data.md).

A sample is one sequence: key = the global index zero-padded to KEY_DIGITS, members `tokens.npy` (the
seq_len + 1 tokens in the config's token dtype) and `meta.json` ({"index", "bank", "rule", "score"}: the
rule behind the sequence, from `NCAStream.rules`). Tars are built in memory with webdataset's TarWriter and a
fixed mtime, so a shard's bytes (and sha256) are a pure function of config and index range.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from nca_scale.errors import UserError

KEY_DIGITS = 12
MTIME = 0  # fixed so that re-generating a shard reproduces it byte for byte


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ShardSamples:
    """The content of one shard, as arrays (rows in index order)."""

    indices: np.ndarray  # (n,) int64 global sequence indices
    tokens: np.ndarray  # (n, seq_len + 1) token dtype
    banks: np.ndarray  # (n,) int64
    rules: np.ndarray  # (n,) int64 candidate ids
    scores: np.ndarray  # (n,) float64


def _npy_header(row: np.ndarray) -> bytes:
    # every row has the same shape and dtype, so the .npy header is built once per shard, not per sample
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(row))
    return buf.getvalue()


def _json_float(x: float) -> str:
    return repr(x) if math.isfinite(x) else "null"


def score_of(meta: dict) -> float:
    return math.nan if meta["score"] is None else float(meta["score"])


def tar_members(s: ShardSamples) -> bytes:
    """The tar members (headers and padded data) of the samples, without the end-of-archive blocks, via
    webdataset's TarWriter (encoder off: members are pre-encoded bytes). Members of consecutive runs of
    samples concatenate into one tar (`tar_from_members`): generating workers build them in parallel."""
    out = io.BytesIO()
    if not len(s.indices):
        raise ValueError("a shard needs at least one sample")
    header = _npy_header(s.tokens[0])
    tokens = np.ascontiguousarray(s.tokens)
    # tolist() once per shard is far cheaper than numpy scalar access per sample
    rows = zip(s.indices.tolist(), s.banks.tolist(), s.rules.tolist(), s.scores.tolist(), tokens)
    with wds.TarWriter(out, encoder=False, mtime=MTIME) as tw:
        # TarWriter means to default to USTAR but never passes it to tarfile, which then runs PAX checks per
        # member; our short ASCII names need no PAX records, so the bytes are identical and ~20% cheaper
        tw.tarstream.format = tarfile.USTAR_FORMAT
        for index, bank, rule, score, row in rows:
            tw.write({
                "__key__": f"{index:0{KEY_DIGITS}d}",
                "tokens.npy": header + row.tobytes(),
                # repr of a finite float is the shortest round-tripping decimal, i.e. valid, exact JSON;
                # unscored rules (no complexity band) have a NaN score, written as null
                "meta.json": f'{{"index":{index},"bank":{bank},"rule":{rule},"score":{_json_float(score)}}}'.encode(),
            })
        members = tw.tarstream.offset  # closing appends the end-of-archive blocks after this
    return out.getvalue()[:members]


def tar_from_members(parts: list[bytes]) -> bytes:
    """One tar from member runs: what tarfile appends on close, two zero blocks padded to a whole record."""
    size = sum(map(len, parts)) + 2 * tarfile.BLOCKSIZE
    return b"".join([*parts, bytes(2 * tarfile.BLOCKSIZE + (-size) % tarfile.RECORDSIZE)])


def build_shard(s: ShardSamples) -> bytes:
    """Tar bytes of the samples."""
    return tar_from_members([tar_members(s)])


def build_and_hash(s: ShardSamples) -> tuple[bytes, str]:
    """(tar bytes, sha256): the unit of work a tar-building worker process does."""
    data = build_shard(s)
    return data, sha256(data)


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def iter_tar_samples(shards: Iterable[dict]) -> Iterator[dict]:
    """Samples ({"__key__", "__url__", "tokens.npy", "meta.json"} as bytes) from {"url", "stream"} dicts,
    through webdataset's own tar expansion and key grouping."""
    return group_by_keys(tar_file_expander(shards))


def parse_shard(data: bytes, name: str, dtype: str, expect: range) -> ShardSamples:
    """Decode verified shard bytes into arrays; a sample out of place means the shard is not ours."""
    n = len(expect)
    out = ShardSamples(
        np.asarray(expect, dtype=np.int64), None, np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.float64)
    )
    rows = []
    try:
        samples = list(iter_tar_samples([{"url": name, "stream": io.BytesIO(data)}]))
        for j, sample in enumerate(samples):
            meta = json.loads(sample["meta.json"])
            if j >= n or int(sample["__key__"]) != expect[j] or meta["index"] != expect[j]:
                raise ValueError(f"sample {sample['__key__']} is out of place")
            rows.append(decode_npy(sample["tokens.npy"]))
            out.banks[j], out.rules[j], out.scores[j] = meta["bank"], meta["rule"], score_of(meta)
        if len(samples) != n:
            raise ValueError(f"{len(samples)} samples, expected {n}")
        out.tokens = np.stack(rows).astype(dtype, copy=False)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"shard {name} is corrupt: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return out
