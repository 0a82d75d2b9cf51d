"""Fixtures for the shard tests: the tiny config, reference sequences straight from the generator, and a way
to run `nca-scale generate` in-process (what the console script calls)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from nca_scale import cli, config
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stream import NCAStream


@pytest.fixture(scope="session")
def tiny_yaml(repo_root) -> str:
    return str(repo_root / "configs" / "nca" / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_yaml) -> NCAConfig:
    return config.load(NCAConfig, tiny_yaml)


@pytest.fixture(scope="session")
def reference(tiny_cfg):
    """reference(indices, split="train", cfg=tiny) -> (tokens as int64, banks, rules, scores) from NCAStream.

    Sequences are generated once per (config, split, index) and reused: many tests compare the same ranges.
    """
    streams, memo = {}, {}

    def get(indices, split="train", cfg=None):
        key = (cfg or tiny_cfg, split)
        if key not in streams:
            streams[key] = NCAStream(key[0], split)
        s = streams[key]
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64)]
        missing = sorted({i for i in idx if (key, i) not in memo})
        if missing:
            for i, row in zip(missing, s.sequences(np.array(missing)).numpy().astype(np.int64)):
                memo[key, i] = row
        banks, rules, scores = s.rules(np.array(idx, dtype=np.int64))
        return np.stack([memo[key, i] for i in idx]), banks, rules, scores

    return get


@pytest.fixture
def generate(tiny_yaml):
    """generate(out, tokens, *more_args) -> exit status of `nca-scale generate tiny.yaml ...` run in-process."""

    def run(out: str, tokens: int, *args: str) -> int:
        return cli.main(["generate", tiny_yaml, f"out={out}", f"tokens={tokens}", "progress=false", *args])

    return run


@pytest.fixture(scope="session")
def rule_bank_cache() -> dict:
    return {}


@pytest.fixture(autouse=True)
def shared_rule_banks(request, rule_bank_cache, monkeypatch):
    """Share rule banks between the many NCAStreams these tests create (each `generate` makes one).

    A bank is a pure function of (config, split, number), so sharing changes no token; it only avoids
    re-scoring the same candidate rules in every test. The patch is made per test (function scope), so it
    applies to the tests of this folder only and is undone after each; a test that covers bank scoring itself
    is marked `fresh_banks` and builds its own. Subprocess tests always build their own.
    """
    if request.node.get_closest_marker("fresh_banks"):
        return
    original = NCAStream.bank

    def bank(self, number):
        key = (self.cfg, self.split, int(number), self.bank_size, str(self.device))
        if key not in rule_bank_cache:
            rule_bank_cache[key] = original(self, number)
        return rule_bank_cache[key]

    monkeypatch.setattr(NCAStream, "bank", bank)


@pytest.fixture
def pool_tasks(monkeypatch, counting_pool) -> collections.Counter:
    """Counter of the tasks (by function name) that `generate workers>1` submits to its generating pool."""
    from nca_scale.data import writer

    tasks, original = collections.Counter(), writer.generator_pool
    monkeypatch.setattr(writer, "generator_pool", lambda workers: counting_pool(original(workers), tasks))
    return tasks
