"""The NCA sequence stream: sequence i is a pure function of (config, seed, split, i).

Index -> sample (docs/data.md has the contract):
  bank n and position q of sequence i come from the refresh policy (never: n = 0, q = i; epoch: one bank per
  pass over R rules; every N: n = i // N). Within bank n, pass e = q // R visits the R rules once each:
  pass 0 in bank order (accepted rules are i.i.d. draws already, and this lets a short run score only the
  rules it uses), later passes in the order of a permutation keyed by (seed, split, n, e); rule =
  bank[slot], slot = perm_e[q % R]. The trajectory's initial state and sampling noise are keyed by
  (seed, split, i). Nothing depends on batch size, workers or earlier indices.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Executor

import numpy as np
import torch

from nca_scale.nca import rng
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import SPLITS, NodeBanks, RuleBank, rule_tables
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.tokenizer import encode

_CACHE = 4  # banks / permutations kept in memory
# Revision of the (config, seed, split, i) -> tokens function, part of a shard directory's fingerprint so
# that sequences of two revisions are never mixed. 2: the last layer sums its products in a fixed order
# (automaton.py) instead of through a BLAS matmul, which changed a few near-tie cells.
REVISION = 2


class NCAStream:
    def __init__(
        self, cfg: NCAConfig, split: str = "train", device: str = "cpu", batch_size: int = 512,
        threads: int = 1, progress: bool = False, pool: Executor | None = None, in_flight: int = 4,
        node_banks: bool = False,
    ):
        """`pool` (a process pool, e.g. the shard writer's) scores rule banks in parallel, `in_flight` pieces
        at a time; banks, and so sequences, are the same with or without it. With `node_banks`, the ranks of
        a node score each bank once between them (bank.NodeBanks; `prepare` tells them what a step needs)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        cfg.validate()
        self.cfg, self.split, self.device = cfg, split, torch.device(device)
        self.batch_size, self.threads, self.progress = batch_size, threads, progress
        self.pool, self.in_flight = pool, in_flight
        self.bank_size = cfg.bank.size if split == "train" else cfg.bank.val_size
        self.automaton = Automaton(cfg, self.device)
        self._banks: OrderedDict[int, RuleBank] = OrderedDict()
        self._perms: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        key = hashlib.sha256(repr((REVISION, cfg)).encode()).hexdigest()[:16]  # what a bank is a function of
        self.shared = NodeBanks.for_this_node(key) if node_banks else None

    # ---- index arithmetic ----------------------------------------------------------------------------
    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bank number, position within bank) for global sequence indices."""
        b = self.cfg.bank
        i = np.asarray(indices, dtype=np.int64)
        if b.refresh == "never":
            return np.zeros_like(i), i
        period = self.bank_size if b.refresh == "epoch" else b.refresh_every
        return i // period, i % period

    def bank(self, number: int) -> RuleBank:
        """Bank `number`, grown lazily (call `.ensure(n)` for its first n rules)."""
        if number not in self._banks:
            self._banks[number] = RuleBank(
                self.cfg, self.split, number, self.bank_size, self.device, threads=self.threads,
                progress=self.progress,
            )
            if len(self._banks) > _CACHE:
                self._banks.popitem(last=False)
        return self._banks[number]

    def _slots(self, number: int, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Bank slots of positions (within one pass) of pass `epoch` over bank `number`."""
        if epoch == 0:
            return positions
        return self._perm(number, epoch).numpy()[positions]

    def _perm(self, number: int, epoch: int) -> torch.Tensor:
        key = (number, epoch)
        if key not in self._perms:
            self._perms[key] = rng.permutation(self.bank_size, rng.PERM, self.cfg.seed, SPLITS[self.split], number, epoch)
            if len(self._perms) > _CACHE:
                self._perms.popitem(last=False)
        return self._perms[key]

    def rules(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bank number, candidate id, complexity score) of the rule behind each sequence index."""
        banks, pos = self.locate(indices)
        cand = np.empty(len(banks), dtype=np.int64)
        score = np.empty(len(banks), dtype=np.float64)
        for n in np.unique(banks):
            sel = banks == n
            bank = self.bank(int(n))
            for e in np.unique(pos[sel] // self.bank_size):
                sub = sel & (pos // self.bank_size == e)
                slot = self._slots(int(n), int(e), pos[sub] % self.bank_size)
                if self.shared is None:
                    bank.ensure(int(slot.max()) + 1, self.pool, self.in_flight)
                else:
                    self.shared.ensure(bank, int(slot.max()) + 1, self.pool, self.in_flight)
                cand[sub], score[sub] = bank.candidates[slot], bank.scores[slot]
        return banks, cand, score

    def trajectory_keys(self, indices: torch.Tensor) -> torch.Tensor:
        """62-bit per-sequence keys (two 31-bit hashes) for initial state and sampling noise."""
        base = (rng.TRAJ, self.cfg.seed, SPLITS[self.split])
        hi = rng.hash32(*base, 0, indices, device=indices.device) >> 1
        lo = rng.hash32(*base, 1, indices, device=indices.device) >> 1
        return (hi << 31) | lo

    def prepare(self, indices) -> None:
        """Know the rules behind `indices` (e.g. a whole global batch, which every rank asks for alike): what
        the node's ranks score once between them with node_banks."""
        self.rules(np.asarray(indices, dtype=np.int64).reshape(-1))

    # ---- generation ----------------------------------------------------------------------------------
    def sequences(self, indices) -> torch.Tensor:
        """(n, seq_len + 1) int32 tokens of the given global indices, in the given order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and idx.min() < 0:
            raise ValueError("sequence indices must be >= 0")
        banks, cand, _ = self.rules(idx)
        return self.generate(banks, cand, idx)

    def generate(self, banks: np.ndarray, candidates: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        """Tokens of sequences `indices` whose rules (`rules(indices)`: bank numbers, candidate ids) are
        given: generation without touching the banks, e.g. in a worker process that never scores them."""
        out = torch.empty(len(indices), self.cfg.sequence_tokens, dtype=torch.int32, device=self.device)
        with torch.inference_mode():
            for n in np.unique(banks):
                where = np.nonzero(banks == n)[0]
                for lo in range(0, len(where), self.batch_size):
                    rows = where[lo : lo + self.batch_size]
                    out[torch.from_numpy(rows).to(self.device)] = self._generate(int(n), candidates[rows], indices[rows])
        return out

    def _generate(self, number: int, candidates: np.ndarray, indices: np.ndarray) -> torch.Tensor:
        cfg = self.cfg
        tables = rule_tables(cfg, self.split, number, torch.from_numpy(candidates).to(self.device))
        keys = self.trajectory_keys(torch.from_numpy(indices).to(self.device))
        frames = self.automaton.rollout(tables, keys, cfg.frames, cfg.burn_in, cfg.dt)
        return encode(cfg, frames)

    def iterate(self, start: int = 0, stride: int = 1, stop: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(index, tokens) for indices start, start+stride, ... (< stop, or forever): rank r of world w and
        worker k of K reads start = r*K + k, stride = w*K."""
        i = start
        while stop is None or i < stop:
            end = i + stride * self.batch_size
            if stop is not None:
                end = min(end, stop)
            idx = np.arange(i, end, stride)
            for j, seq in zip(idx, self.sequences(idx)):
                yield int(j), seq
            i = int(idx[-1]) + stride
