"""Data made once per node (files.node_share): rule banks (nca.bank.NodeBanks) and checked text-shard rows
(TextShardReader node copies). The node's first rank makes what the global batch needs and writes it, the other
ranks read it and never make it; every rank gets the tokens a lone reader gives. Two ranks are two threads here
(the same code path as two processes, which only share the files); the 2-rank tests (torch DDP on NCA data,
megatron TP=2 on text) run it across processes."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nca_scale import config as config_io
from nca_scale.data.text.shards import PackConfig, TextShardReader, pack
from nca_scale.errors import UserError
from nca_scale.files import NodeCache
from nca_scale.nca import bank as bank_mod
from nca_scale.nca.bank import NodeBanks
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stream import NCAStream

B, RANKS, STEPS = 8, 2, 3  # global batch, ranks of the node, steps


@pytest.fixture(scope="module")
def cfg() -> NCAConfig:
    nca = config_io.load(NCAConfig, "configs/nca/tiny.yaml")
    return replace(nca, bank=replace(nca.bank, size=32))  # the 24 sequences below use 24 of its rules


def _rank(stream: NCAStream, rank: int, out: list) -> None:
    """What BatchLoader.batch does on one rank: the global batch's rules, then this rank's rows."""
    per = B // RANKS
    for step in range(STEPS):
        stream.prepare(np.arange(step * B, (step + 1) * B))
        out.append(stream.sequences(np.arange(step * B + rank * per, step * B + (rank + 1) * per)))


def test_the_leader_scores_and_the_other_rank_reads(cfg, tmp_path, monkeypatch):
    alone = NCAStream(cfg, "train").sequences(np.arange(STEPS * B))
    scored_by: list[str] = []
    probe = bank_mod.probe_scores

    def counting(*args, **kwargs):
        scored_by.append(threading.current_thread().name)
        return probe(*args, **kwargs)

    monkeypatch.setattr(bank_mod, "probe_scores", counting)
    streams, outs, threads = [], [[], []], []
    for rank in range(RANKS):
        stream = NCAStream(cfg, "train")
        stream.shared = NodeBanks(tmp_path, "key", leader=rank == 0)
        streams.append(stream)
        threads.append(threading.Thread(target=_rank, args=(stream, rank, outs[rank]), name=f"rank{rank}"))
    threads[1].start()  # the follower asks first: it waits for the leader's file
    threads[1].join(0.3)
    assert threads[1].is_alive() and not scored_by
    threads[0].start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    per = B // RANKS
    for rank in range(RANKS):
        assert len(outs[rank]) == STEPS
        for step, got in enumerate(outs[rank]):
            start = step * B + rank * per
            assert torch.equal(got, alone[start:start + per]), (rank, step)
    assert scored_by and set(scored_by) == {"rank0"}  # the follower never scored a rule
    assert streams[1].bank(0).scanned == streams[0].bank(0).scanned


def test_a_file_an_earlier_run_left_is_reused(cfg, tmp_path, monkeypatch):
    first = NCAStream(cfg, "train")
    first.shared = NodeBanks(tmp_path, "key", leader=True)
    first.prepare(np.arange(B))
    monkeypatch.setattr(bank_mod, "probe_scores", lambda *a, **k: pytest.fail("scored again"))
    again = NCAStream(cfg, "train")
    again.shared = NodeBanks(tmp_path, "key", leader=True)  # a new run's leader: the prefix it needs is there
    again.prepare(np.arange(B))
    assert np.array_equal(again.bank(0).candidates, first.bank(0).candidates)


def test_a_follower_whose_leader_never_writes_stops_with_a_line(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(NodeBanks, "WAIT_S", 0.2)
    stream = NCAStream(cfg, "train")
    stream.shared = NodeBanks(tmp_path, "key", leader=False)
    with pytest.raises(UserError, match=r"^waited 0s for rule bank .*key-train-0\.npz from this node's first rank "
                                        r"\(LOCAL_RANK 0\), which makes it; check that rank's output$"):
        stream.prepare(np.arange(B))


def test_sharing_is_on_only_with_several_ranks_on_the_node(cfg, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert NCAStream(cfg, "train", node_banks=True).shared is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    shared = NCAStream(cfg, "train", node_banks=True).shared
    assert shared is not None and not shared.leader


# ---- text shards: read and checked once per node, each rank maps its rows -----------------------------------
class Corpus:
    """The part of a corpus text_shards.pack reads: 40 documents of 30 tokens each."""

    name, domain, fingerprint, manifest = "tiny", "web", "f" * 64, {"splits": {"train": {}}}
    loc = SimpleNamespace(url="memory://tiny")

    def count(self, split):
        return 40

    def documents(self, split):
        return ({"text": " ".join(str(i * 7 + j) for j in range(29)), "sha256": f"{i:064x}"} for i in range(40))


class Tokenizer:
    vocab_size, eos_id, sha256 = 1000, 0, "t" * 64

    def encode(self, texts, threads):
        return [[int(w) % 999 + 1 for w in t.split()] for t in texts]

    def describe(self):
        return {"sha256": self.sha256}


def _node_cache(directory: Path, leader: bool) -> NodeCache:
    """A rank's NodeCache as node_share would make it on a node of RANKS ranks (threads here share one
    environment, so it is made by hand), uncapped."""
    cache = NodeCache.__new__(NodeCache)
    cache.directory, cache.leader, cache.recent, cache.cap = directory, leader, [set(), set()], float("inf")
    return cache


def test_text_shards_are_checked_once_per_node_and_each_rank_maps_its_rows(tmp_path, monkeypatch):
    url = str(tmp_path / "shards")
    pack(Corpus(), "train", Tokenizer(), url, PackConfig(seq_len=15, sequences_per_shard=16))
    alone = TextShardReader(url)
    assert len(alone) == 75 and len(alone.shards) == 5
    expected = alone.sequences(np.arange(72))  # before counting reads
    loaded_by: list[str] = []
    load = TextShardReader._load

    def counting(self, s):
        loaded_by.append(threading.current_thread().name)
        return load(self, s)

    monkeypatch.setattr(TextShardReader, "_load", counting)
    readers = [TextShardReader(url) for _ in range(RANKS)]
    outs: list[list] = [[], []]

    def rank(r: int) -> None:
        reader, per = readers[r], 12 // RANKS  # a global batch of 12 rows: steps cross shard boundaries
        for step in range(6):
            reader.prepare(np.arange(step * 12, (step + 1) * 12))
            outs[r].append(reader.sequences(np.arange(step * 12 + r * per, step * 12 + (r + 1) * per)))

    for r, reader in enumerate(readers):
        reader.node = _node_cache(tmp_path / "node", leader=r == 0)
    (tmp_path / "node").mkdir()
    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in range(RANKS)]
    threads[1].start()
    threads[1].join(0.3)
    assert threads[1].is_alive()  # waits for the first rank's copy
    threads[0].start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    for r in range(RANKS):
        for step, got in enumerate(outs[r]):
            start = step * 12 + r * 6
            assert np.array_equal(got, expected[start:start + 6]), (r, step)
    assert sorted(loaded_by) == ["rank0"] * 5  # each shard read and checked once, by the first rank
    assert sorted(p.name for p in (tmp_path / "node").iterdir()) == sorted(f"{s['sha256']}.npy" for s in alone.shards)
    assert isinstance(readers[1].shard_rows(readers[1].shards[0]), np.memmap)  # rows are read where asked for
