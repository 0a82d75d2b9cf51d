"""Read a shard directory back: the sequences the generator gives for the same indices, or a clear error.

Only shards listed in manifest.json are read, and each is checked against the manifest's size and sha256
before any of its samples is handed out, so a truncated or altered shard raises `UserError` naming it
instead of yielding wrong tokens. Shards are read whole (they are tens of MB) and verified in memory.
"""

from __future__ import annotations

import bisect
import io
import json
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import webdataset as wds

from nca_scale.data import manifest as mf
from nca_scale.data.shards import ShardSamples, decode_npy, iter_tar_samples, parse_shard, score_of, sha256
from nca_scale.data.urls import parse_location
from nca_scale.errors import UserError


class ShardReader:
    """A published shard directory: `reader[i]` / `reader.sequences(indices)` by global index, or
    `reader.samples()` / `reader.pipeline()` to stream every sample in index order through webdataset."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, cache_shards: int = 2):
        self.loc = parse_location(url, endpoint_url, what="shards")
        where = self.loc.url_of(mf.MANIFEST)
        try:
            raw = self.loc.read(mf.MANIFEST)
        except FileNotFoundError:
            raise UserError(f"{where} does not exist: not a complete shard directory (generation unfinished?)") from None
        except OSError as e:
            raise UserError(f"cannot read {where}: {e}") from None
        self.manifest = mf.parse_manifest(raw, where)
        self.config = mf.config_of(self.manifest, where)
        self.split: str = self.manifest["split"]
        self.start: int = self.manifest["start"]
        self.stop: int = self.manifest["stop"]
        self.token_dtype = np.dtype(self.manifest["token_dtype"])
        self.shards: list[dict] = self.manifest["shards"]
        self._starts = [s["start"] for s in self.shards]
        self._cache: OrderedDict[str, ShardSamples] = OrderedDict()
        self._cache_size = cache_shards

    def __len__(self) -> int:
        return self.stop - self.start

    # ---- whole shards ------------------------------------------------------------------------------------
    def shard_bytes(self, entry: dict) -> bytes:
        """The shard's bytes after checking them against the manifest (UserError naming the shard if not)."""
        name = entry["name"]
        try:
            data = self.loc.read(name)
        except FileNotFoundError:
            raise UserError(f"shard {self.loc.url_of(name)} is listed in the manifest but missing") from None
        if len(data) != entry["bytes"]:
            raise UserError(
                f"shard {self.loc.url_of(name)} is corrupt: {len(data)} bytes, manifest says {entry['bytes']} (truncated?)"
            )
        if sha256(data) != entry["sha256"]:
            raise UserError(f"shard {self.loc.url_of(name)} is corrupt: sha256 does not match the manifest")
        return data

    def shard(self, entry: dict) -> ShardSamples:
        name = entry["name"]
        if name not in self._cache:
            data = self.shard_bytes(entry)
            self._cache[name] = parse_shard(
                data, self.loc.url_of(name), self.token_dtype.name, range(entry["start"], entry["stop"])
            )
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(name)
        return self._cache[name]

    # ---- random access -----------------------------------------------------------------------------------
    def locate(self, index: int) -> dict:
        k = bisect.bisect_right(self._starts, index) - 1
        if k < 0 or index >= self.shards[k]["stop"]:
            raise IndexError(f"sequence {index} is not in this dataset (indices {self.start}..{self.stop - 1})")
        return self.shards[k]

    def __getitem__(self, index: int) -> np.ndarray:
        entry = self.locate(int(index))
        return self.shard(entry).tokens[int(index) - entry["start"]]

    def sequences(self, indices) -> np.ndarray:
        """(n, seq_len + 1) tokens of global `indices`, in the given order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.config.sequence_tokens), dtype=self.token_dtype)
        for j, i in enumerate(idx.tolist()):
            out[j] = self[i]
        return out

    def shard_urls(self) -> list[str]:
        """Full URLs of the listed shards, e.g. for `webdataset.WebDataset` (see `urls.register_gopen`)."""
        return [self.loc.url_of(s["name"]) for s in self.shards]

    # ---- streaming ---------------------------------------------------------------------------------------
    def _open_verified(self, src: Iterator[dict]) -> Iterator[dict]:
        by_name = {s["name"]: s for s in self.shards}
        for item in src:
            data = self.shard_bytes(by_name[item["url"]])
            yield {"url": item["url"], "stream": io.BytesIO(data)}

    def pipeline(self, *shard_stages) -> wds.DataPipeline:
        """webdataset pipeline over the listed shards in order, yielding dicts
        {"index", "tokens" (np array), "bank", "rule", "score", "shard"}.

        `shard_stages` run on the shard list (e.g. `wds.split_by_node`, `wds.split_by_worker`); add sample
        stages by composing: `wds.DataPipeline(reader.pipeline(), wds.shuffle(100), wds.batched(8))`.
        """
        return wds.DataPipeline(
            wds.SimpleShardList([s["name"] for s in self.shards]),
            *shard_stages,
            self._open_verified,
            iter_tar_samples,
            wds.map(_decode_sample),
            self._check_ranges,
        )

    def _check_ranges(self, src: Iterator[dict]) -> Iterator[dict]:
        """Each shard must hold exactly its manifest range, in order (a checksum only proves the bytes)."""
        by_name = {s["name"]: s for s in self.shards}
        entry, expect = None, None

        def close(entry, expect):
            if entry is not None and expect != entry["stop"]:
                raise UserError(f"shard {self.loc.url_of(entry['name'])} is corrupt: it ends at sequence {expect}, "
                                f"manifest says {entry['stop']}")

        for sample in src:
            if entry is None or sample["shard"] != entry["name"]:
                close(entry, expect)
                entry = by_name[sample["shard"]]
                expect = entry["start"]
            if sample["index"] != expect:
                raise UserError(f"shard {self.loc.url_of(entry['name'])} is corrupt: sequence {sample['index']} "
                                f"where {expect} belongs")
            expect += 1
            yield sample
        close(entry, expect)

    def samples(self) -> Iterator[dict]:
        """Every sample in index order (see `pipeline`); errors come out as `UserError` naming the shard."""
        it = iter(self.pipeline())
        while True:
            try:
                sample = next(it)
            except StopIteration:
                return
            except UserError:
                raise
            except Exception as e:  # a tar that passed its checksum but does not parse: not written by us
                # webdataset appends the shard's url to the exception's args
                name = next((a for a in reversed(e.args) if isinstance(a, str) and a.endswith(".tar")), "?")
                first = str(e.args[0]).splitlines()[0] if e.args else type(e).__name__
                raise UserError(f"shard {self.loc.url_of(name)} is corrupt: {first}") from None
            yield sample


def _decode_sample(sample: dict) -> dict:
    meta = json.loads(sample["meta.json"])
    return {
        "index": int(sample["__key__"]), "tokens": decode_npy(sample["tokens.npy"]),
        "bank": meta["bank"], "rule": meta["rule"], "score": score_of(meta), "shard": sample["__url__"],
    }


def open_shards(url: str, endpoint_url: str | None = None) -> ShardReader:
    return ShardReader(url, endpoint_url=endpoint_url)
