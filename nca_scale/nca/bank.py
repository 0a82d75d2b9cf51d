"""Rule banks: the accepted rules a stream draws its sequences from.

Bank n of a split is built by scoring candidate rules 0, 1, 2, ... (weights keyed by seed, split, n and the
candidate id) and keeping, in candidate order, the first `size` whose score falls in the band. Scores are
per-candidate pure functions, so the bank does not depend on how candidates are batched. A bank is stored as
candidate ids and scores only: weights are re-derived from the ids.
"""

from __future__ import annotations

import functools
from collections import deque
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nca_scale.files import node_share, replacing, wait_for
from nca_scale.nca import rng
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.complexity import in_band, scores
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.rules import RuleTables, fold, sample_params

SPLITS = {"train": 0, "val": 1}
PROBE = 7  # rng domain of probe trajectories
MAX_CANDIDATES_PER_RULE = 10_000  # give up (clear error) on bands that (almost) never accept
PIECE = 256  # most candidates per task when a pool scores a bank: ~0.1 s of one core


def rule_key(cfg: NCAConfig, split: str, number: int) -> tuple[int, int, int]:
    return (cfg.seed, SPLITS[split], number)


def rule_tables(cfg: NCAConfig, split: str, number: int, candidates: torch.Tensor) -> RuleTables:
    return fold(cfg, sample_params(cfg, candidates, *rule_key(cfg, split, number)))


def probe_scores(
    cfg: NCAConfig, automaton: Automaton, split: str, number: int, candidates: torch.Tensor, threads: int = 1
) -> np.ndarray:
    """Complexity of each candidate rule on its probe trajectory (see ComplexityConfig)."""
    c = cfg.complexity
    tables = rule_tables(cfg, split, number, candidates)
    keys = rng.hash32(PROBE, *rule_key(cfg, split, number), candidates, device=candidates.device)
    if c.probe == "reference":
        frames = automaton.rollout(tables, keys, c.probe_frames, c.probe_start, 1)
    else:
        frames = automaton.rollout(tables, keys, cfg.frames, cfg.burn_in, cfg.dt)
    return scores(cfg, frames, threads)


@functools.lru_cache(maxsize=4)
def _automaton(cfg: NCAConfig, device: str) -> Automaton:
    return Automaton(cfg, device)


def score_range(cfg: NCAConfig, split: str, number: int, start: int, stop: int, device: str = "cpu") -> np.ndarray:
    """Scores of candidates [start, stop) of bank `number` (NaN, unscored, without a band): the task a pool
    of processes runs to score a bank in parallel (`RuleBank.ensure(n, pool)`)."""
    if cfg.complexity.lo is None:  # no filter: every candidate is accepted and no probe is rolled out
        return np.full(stop - start, np.nan)
    with torch.inference_mode():
        ids = torch.arange(start, stop, device=device)
        return probe_scores(cfg, _automaton(cfg, str(device)), split, number, ids)


class RuleBank:
    """Bank `number` of a split: the first `size` accepted candidates, scored lazily in fixed-size chunks.
    Without a band (complexity.lo = None) every candidate is accepted unscored and its score is NaN.

    `ensure(n)` scores just enough chunks to know the first n accepted rules, so a short run does not pay for
    a whole bank. Chunks are taken in candidate order and a candidate's score does not depend on its chunk or
    on the process that scored it, so the bank is the same however it is grown, in one process or a pool.
    """

    def __init__(self, cfg: NCAConfig, split: str, number: int, size: int, device="cpu", chunk: int = 2048,
                 threads: int = 1, progress: bool = False):
        self.cfg, self.split, self.number, self.size = cfg, split, number, size
        self.device, self.chunk, self.threads, self.progress = device, chunk, threads, progress
        self.automaton = Automaton(cfg, device)
        self._pending: deque[tuple[int, int, Future]] = deque()  # (start, size, task) scored in a pool, in order
        self._ids: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._accepted = 0
        self.scanned = 0  # candidates scored so far

    @property
    def candidates(self) -> np.ndarray:
        """Accepted candidate ids known so far (at most `size`), in candidate order."""
        return np.concatenate(self._ids)[: self.size] if self._ids else np.zeros(0, dtype=np.int64)

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate(self._scores)[: self.size] if self._scores else np.zeros(0)

    @property
    def acceptance(self) -> float:
        return self._accepted / max(self.scanned, 1)

    def _next_chunk(self, n: int) -> int:
        """Candidates to score next: about what n rules still need at the acceptance seen so far (a half
        before any is known), in multiples of 64, capped at `chunk`. Banks do not depend on it."""
        rate = self.acceptance if self.scanned else 0.5
        want = 1.25 * (n - self._accepted) / max(rate, 0.01)
        return int(min(self.chunk, max(64, -(-want // 64) * 64)))

    def ensure(self, n: int, pool: Executor | None = None, in_flight: int = 4) -> RuleBank:
        """Score candidates until the first n accepted rules are known. With a process pool, up to
        `in_flight` pieces of candidates are scored at once (`score_range`) and taken back in order."""
        n = min(n, self.size)
        if self._accepted >= n:
            return self
        bar = tqdm(total=n, initial=min(self._accepted, n), desc=f"rule bank {self.split}/{self.number}",
                   unit="rule", disable=not self.progress, leave=False)
        with torch.inference_mode():
            if pool is None:
                while self._pending and self._accepted < n:  # pieces a pool scored for an earlier call
                    self._take_pending()
                while self._accepted < n:
                    self._check_band(n)
                    start = self.scanned
                    stop = start + self._next_chunk(n)
                    if self.cfg.complexity.lo is None:
                        self._add(start, score_range(self.cfg, self.split, self.number, start, stop))
                    else:
                        ids = torch.arange(start, stop, device=self.device)
                        self._add(start, probe_scores(self.cfg, self.automaton, self.split, self.number, ids, self.threads))
                    bar.update(min(self._accepted, n) - bar.n)
            else:
                self._ensure_in(pool, n, in_flight, bar)
        bar.close()
        return self

    def _ensure_in(self, pool: Executor, n: int, in_flight: int, bar: tqdm) -> None:
        pending = self._pending
        submitted = self.scanned + sum(size for _, size, _ in pending)
        try:
            while self._accepted < n:
                self._check_band(n)
                rate = self.acceptance if self.scanned else 0.5
                # up to `in_flight` pieces while the rules expected from them do not cover what is missing, and
                # never fewer than half of that, so no process waits for the next piece near the end; pieces
                # shrink towards the end so the last ones spread over all processes
                while len(pending) < in_flight:
                    missing = n - self._accepted - rate * (submitted - self.scanned)
                    if missing <= 0 and len(pending) >= max(1, in_flight // 2):
                        break
                    want = 1.1 * max(missing, 1) / max(rate, 0.01) / in_flight
                    size = int(min(PIECE, max(64, -(-want // 64) * 64)))
                    task = pool.submit(score_range, self.cfg, self.split, self.number, submitted, submitted + size,
                                       str(self.device))
                    pending.append((submitted, size, task))
                    submitted += size
                self._take_pending()
                bar.update(min(self._accepted, n) - bar.n)
        except BaseException:
            self._drop_pending()
            raise
        # pieces not started yet are dropped (from the end, so the rest stays contiguous); running ones are
        # kept for the next call instead of waited for: the caller's next tasks queue up behind them
        while pending and pending[-1][2].cancel():
            pending.pop()

    def _take_pending(self) -> None:
        """Add the first pending piece's scores (waiting for them)."""
        start, _, task = self._pending.popleft()
        try:
            scores = task.result()
        except BaseException:
            self._drop_pending()
            raise
        self._add(start, scores)

    def _drop_pending(self) -> None:
        """Forget pending pieces (a failed pool): their candidates are scored again when needed."""
        for _, _, task in self._pending:
            task.cancel()
        self._pending.clear()

    def _add(self, start: int, scores: np.ndarray) -> None:
        """Scores of candidates [start, start + len(scores)), which must follow the ones scored so far."""
        assert start == self.scanned, (start, self.scanned)
        ok = in_band(self.cfg.complexity.lo, self.cfg.complexity.hi, scores)
        self._ids.append(np.arange(start, start + len(scores), dtype=np.int64)[ok])
        self._scores.append(scores[ok])
        self._accepted += int(ok.sum())
        self.scanned += len(scores)

    def covers(self, n: int) -> bool:
        """Whether the first n accepted rules (at most `size`) are known."""
        return self._accepted >= min(n, self.size)

    def state(self) -> dict[str, np.ndarray]:
        """What has been scored so far (accepted ids and scores, candidates scanned): `restore` takes it back."""
        return {"ids": self.candidates, "scores": self.scores, "scanned": np.int64(self.scanned),
                "accepted": np.int64(self._accepted)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        """Continue from another process's `state()` of the same bank: the same rules, as scoring gives them."""
        self._drop_pending()
        self._ids, self._scores = [np.asarray(state["ids"], dtype=np.int64)], [np.asarray(state["scores"])]
        self.scanned, self._accepted = int(state["scanned"]), int(state["accepted"])

    def _check_band(self, n: int) -> None:
        from nca_scale.errors import UserError

        c = self.cfg.complexity
        if self.scanned >= MAX_CANDIDATES_PER_RULE * max(n, 100):
            raise UserError(
                f"complexity band ({c.lo}, {c.hi}) accepted {self._accepted} of {self.scanned} random "
                f"rules; widen the band (complexity.lo/hi) or check `nca-scale nca stats`"
            )


def build_bank(cfg: NCAConfig, split: str, number: int, size: int, device="cpu", chunk: int = 2048,
               threads: int = 1, progress: bool = False) -> RuleBank:
    """A complete bank of `size` rules."""
    return RuleBank(cfg, split, number, size, device, chunk, threads, progress).ensure(size)


class NodeBanks:
    """Rule banks scored once per node instead of once per rank (files.node_share). Every rank asks for the rules
    of the whole global batch (the same at every rank); the node's first rank scores what is missing and writes
    the bank to a node-local file, the node's other ranks wait for a file that holds what they asked for and
    read it. Nothing here is a collective, so a leader that scores for a while never trips a collective's
    time-out, and no rank waits for a rule that the leader would only score at a later step. Files are keyed by
    the generator revision, the NCA config, split and bank: their content is a pure function of that key, so a
    file left by an earlier run is as good as a new one."""

    WAIT_S = 3600.0  # a follower gives up on a leader that has not written its bank by then

    def __init__(self, directory: str | Path, key: str, leader: bool):
        self.directory, self.key, self.leader = Path(directory), key, leader

    @classmethod
    def for_this_node(cls, key: str) -> NodeBanks | None:
        share = node_share("banks")
        return None if share is None else cls(share[0], key, leader=share[1])

    def path(self, bank: RuleBank) -> Path:
        return self.directory / f"{self.key}-{bank.split}-{bank.number}.npz"

    def _read(self, bank: RuleBank, n: int) -> dict | None:
        """The node's file of `bank` if it holds its first n rules."""
        try:
            with np.load(self.path(bank)) as f:
                state = dict(f)
        except FileNotFoundError:
            return None
        return state if int(state["accepted"]) >= min(n, bank.size) else None

    def ensure(self, bank: RuleBank, n: int, pool: Executor | None = None, in_flight: int = 4) -> None:
        """The first n rules of `bank` known in this process: from the node's file, else scored (the node's first
        rank, which then writes the file) or waited for (the others)."""
        if bank.covers(n):
            return
        state = self._read(bank, n)
        if state is None and self.leader:
            bank.ensure(n, pool, in_flight)
            with replacing(self.path(bank)) as tmp, open(tmp, "wb") as f:  # a reader never sees a torn file
                np.savez(f, **bank.state())
            return
        if state is None:
            wait_for(lambda: self._read(bank, n) is not None, f"rule bank {self.path(bank)}", self.WAIT_S)
            state = self._read(bank, n)
        bank.restore(state)
