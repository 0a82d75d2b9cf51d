"""Dyck-k sequences: the paper's formal-language baseline (k bracket types, bounded depth, open probability).

Sequence i is a pure function of (config, i): its random draws come from numpy's PCG64 seeded with
(seed, i), so any index can be produced alone, on any machine, in any order (like the NCA stream).

A row is complete Dyck words concatenated and cut to seq_len + 1 tokens (the last word is usually cut).
A word starts with an open bracket and ends when its stack is empty again. At each step: at depth 0 the word
ends; at `max_depth` a bracket must close; below `min_depth` (the deepest point of the word so far) it must
open; otherwise it opens with probability `p_open`. Bracket types are uniform over k.

Tokenizer: open bracket of type t = id t, its close = id k + t; vocabulary 2k (the paper: k = 64, 128 ids).
There is no separator between words. `DyckTokenizer` turns ids into readable text and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nca_scale.errors import UserError


@dataclass(frozen=True)
class DyckConfig:
    k: int = 64  # bracket types
    min_depth: int = 1  # every word reaches at least this depth
    max_depth: int = 16  # no word nests deeper than this
    p_open: float = 0.5  # probability of opening a bracket when both moves are allowed
    seq_len: int = 1024  # rows hold seq_len + 1 tokens
    seed: int = 0  # seed of the bracket sequences

    @property
    def vocab_size(self) -> int:
        return 2 * self.k

    @property
    def sequence_tokens(self) -> int:
        return self.seq_len + 1

    def validate(self) -> None:
        if self.k < 1:
            raise UserError(f"dyck.k={self.k} must be >= 1 (bracket types)")
        if not 1 <= self.min_depth <= self.max_depth:
            raise UserError(f"dyck depth range [{self.min_depth}, {self.max_depth}] must satisfy 1 <= min <= max")
        if not 0.0 < self.p_open < 1.0:
            raise UserError(f"dyck.p_open={self.p_open} must be in (0, 1)")
        if self.seq_len < 1:
            raise UserError(f"dyck.seq_len={self.seq_len} must be >= 1")
        if self.seed < 0:
            raise UserError(f"dyck.seed={self.seed} must be >= 0")


def sequence(cfg: DyckConfig, index: int) -> np.ndarray:
    """(seq_len + 1,) int64 tokens of sequence `index`."""
    n = cfg.sequence_tokens
    rng = np.random.Generator(np.random.PCG64([cfg.seed, int(index)]))
    # draws are made in blocks; a row never needs more than n decisions and n bracket types
    coins = rng.random(n) < cfg.p_open
    types = rng.integers(0, cfg.k, size=n)
    out = np.empty(n, dtype=np.int64)
    stack: list[int] = []
    reached = 0
    for t in range(n):
        depth = len(stack)
        if depth == 0:
            reached = 0
            opening = True
        elif depth >= cfg.max_depth:
            opening = False
        elif reached < cfg.min_depth:
            opening = True
        else:
            opening = bool(coins[t])
        if opening:
            stack.append(int(types[t]))
            out[t] = types[t]
            reached = max(reached, len(stack))
        else:
            out[t] = cfg.k + stack.pop()
    return out


class DyckStream:
    """`sequences(indices)` -> (n, seq_len + 1) int64 tensor, the trainer's SequenceSource interface."""

    def __init__(self, cfg: DyckConfig):
        cfg.validate()
        self.cfg = cfg

    def sequences(self, indices) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and idx.min() < 0:
            raise IndexError("sequence indices must be >= 0")
        return torch.from_numpy(np.stack([sequence(self.cfg, i) for i in idx.tolist()]))


def check_prefix(tokens, k: int, max_depth: int | None = None) -> int:
    """Validate that `tokens` is a prefix of concatenated Dyck-k words; returns the number of complete words.
    Raises ValueError at the first violation (a close without a matching open, or depth over max_depth)."""
    stack: list[int] = []
    words = 0
    for pos, tok in enumerate(int(t) for t in tokens):
        if not 0 <= tok < 2 * k:
            raise ValueError(f"token {tok} at {pos} is outside the Dyck-{k} vocabulary")
        if tok < k:
            stack.append(tok)
            if max_depth is not None and len(stack) > max_depth:
                raise ValueError(f"depth {len(stack)} > {max_depth} at {pos}")
        else:
            if not stack or stack[-1] != tok - k:
                raise ValueError(f"close bracket of type {tok - k} at {pos} does not match")
            stack.pop()
            if not stack:
                words += 1
    return words


class DyckTokenizer:
    """Ids <-> text. Open bracket t is written `<t`, its close `t>` (space separated), e.g. `<3 <0 0> 3>`."""

    def __init__(self, k: int):
        self.k = k
        self.vocab_size = 2 * k

    def decode(self, ids) -> str:
        return " ".join(f"<{i}" if i < self.k else f"{i - self.k}>" for i in (int(x) for x in ids))

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in text.split():
            if piece.startswith("<") and piece[1:].isdigit() and int(piece[1:]) < self.k:
                ids.append(int(piece[1:]))
            elif piece.endswith(">") and piece[:-1].isdigit() and int(piece[:-1]) < self.k:
                ids.append(self.k + int(piece[:-1]))
            else:
                raise ValueError(f"{piece!r} is not a Dyck-{self.k} bracket (<t or t> with t < {self.k})")
        return ids
