"""Configuration of the NCA data engine. Defaults reproduce the authors' released code (see docs/nca.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from nca_scale.errors import UserError

TOKEN_DTYPES = {"uint16": 2**16 - 1, "int32": 2**31 - 1}


@dataclass(frozen=True)
class ComplexityConfig:
    """How candidate rules are scored and which band is kept.

    The reference scores each candidate on a separate 10-frame probe rollout (frames s_10..s_19) and keeps
    rules with lo < score < hi (strict). `lo=None` disables the filter.
    """

    mode: Literal["gzip", "diff"] = "gzip"  # gzip: compression ratio of the probe frames; diff: frame change
    lo: float | None = None  # keep rules scoring above this (strict); None = no filter
    hi: float = 1.0  # ... and below this (strict)
    # Reference: a dedicated probe rollout with its own initial state, `probe_frames` frames from step
    # `probe_start`. "training": score the rule on the same frame count and burn-in as training sequences.
    probe: Literal["reference", "training"] = "reference"
    probe_frames: int = 10  # frames of the probe rollout that are scored
    probe_start: int = 10  # step of the probe rollout's first scored frame


@dataclass(frozen=True)
class BankConfig:
    """A bank of accepted rules that sequences draw from (one trajectory per rule per epoch, shuffled).

    refresh: `never` is what the release does (its per-epoch refresh is dead code, paper.md §1);
    `epoch` draws a new bank every epoch (the README's and paper's description); `every` draws a new bank
    every `refresh_every` sequences.
    """

    size: int = 16000  # accepted rules in a train bank
    val_size: int = 2000  # accepted rules in the val bank (disjoint from train)
    refresh: Literal["never", "epoch", "every"] = "never"  # when a new bank is drawn (see BankConfig)
    refresh_every: int = 0  # sequences per bank with refresh=every


@dataclass(frozen=True)
class NCAConfig:
    grid: int = 12  # cells per side of the square torus
    states: int = 10  # cell states (colours)
    patch: int = 2  # cells per side of the patch one token encodes (states ** patch**2 tokens)
    conv_channels: int = 4  # 3x3 conv width
    hidden: int = 16  # 1x1 conv width
    # Reference quirk: jnp.pad(..., mode="wrap") also pads the one-hot state axis, so the 3x3 conv sees
    # states+2 channels (channel 0 = state S-1, channel S+1 = state 0).
    wrap_state_channels: bool = True
    temperature: float = 1e-4  # release launcher; the paper text says 1e-3
    identity_bias: float = 0.0  # added to the logit of a cell's current state (stickier dynamics)
    init_state: Literal["reference", "uniform"] = "reference"  # reference: per-trajectory softmax(z) cells
    burn_in: int = 10  # steps run before the first recorded frame
    dt: int = 1  # steps between recorded frames
    seq_len: int = 1024  # sequences hold seq_len + 1 tokens (inputs and shifted targets)
    token_dtype: Literal["uint16", "int32"] = "uint16"  # token type in shards (uint16 caps the vocabulary)
    mask_first_frame: bool = True  # the reference's loss mask: the first frame is context only
    seed: int = 0  # seed of rules and initial states (train and val draw disjoint streams)
    complexity: ComplexityConfig = field(default_factory=ComplexityConfig)
    bank: BankConfig = field(default_factory=BankConfig)

    # ---- derived sizes -------------------------------------------------------------------------------
    @property
    def patches_per_frame(self) -> int:
        return (self.grid // self.patch) ** 2

    @property
    def frame_tokens(self) -> int:
        return self.patches_per_frame + 2  # <grid> patches </grid>

    @property
    def grid_start(self) -> int:
        return self.states ** (self.patch * self.patch)

    @property
    def grid_end(self) -> int:
        return self.grid_start + 1

    @property
    def vocab_size(self) -> int:
        return self.grid_start + 2

    @property
    def frames(self) -> int:
        """Frames per training sequence: enough for seq_len + 1 tokens (27 for the paper's 1024, 38/frame)."""
        return math.ceil((self.seq_len + 1) / self.frame_tokens)

    @property
    def sequence_tokens(self) -> int:
        return self.seq_len + 1

    @property
    def in_channels(self) -> int:
        return self.states + 2 if self.wrap_state_channels else self.states

    def validate(self) -> None:
        if self.grid < 3:
            raise UserError(f"grid={self.grid} is too small; use grid >= 3")
        if self.states < 2:
            raise UserError(f"states={self.states}: an automaton needs at least 2 states")
        if self.patch < 1 or self.grid % self.patch:
            raise UserError(f"grid={self.grid} is not divisible by patch={self.patch}; pick a patch that divides the grid")
        if self.vocab_size - 1 > TOKEN_DTYPES[self.token_dtype]:
            raise UserError(
                f"vocabulary of {self.vocab_size} tokens (states^(patch^2) + 2) does not fit token_dtype="
                f"{self.token_dtype}; use token_dtype=int32 or fewer states / a smaller patch"
            )
        if self.vocab_size - 1 > TOKEN_DTYPES["int32"]:
            raise UserError(f"vocabulary of {self.vocab_size} tokens exceeds int32; use fewer states or a smaller patch")
        if self.temperature < 0:
            raise UserError(f"temperature={self.temperature} must be >= 0 (0 = argmax dynamics)")
        if self.burn_in < 0 or self.dt < 1:
            raise UserError(f"burn_in={self.burn_in} must be >= 0 and dt={self.dt} >= 1")
        if self.seq_len < self.frame_tokens:
            raise UserError(f"seq_len={self.seq_len} is shorter than one frame ({self.frame_tokens} tokens)")
        if self.conv_channels < 1 or self.hidden < 1:
            raise UserError("conv_channels and hidden must be >= 1")
        c = self.complexity
        if c.lo is not None and not c.lo < c.hi:
            raise UserError(f"complexity band lo={c.lo} must be below hi={c.hi} (rules are kept when lo < score < hi)")
        if c.probe_frames < 2 or c.probe_start < 0:
            raise UserError("complexity.probe_frames must be >= 2 and complexity.probe_start >= 0")
        b = self.bank
        if b.size < 1 or b.val_size < 1:
            raise UserError(f"bank.size={b.size} and bank.val_size={b.val_size} must be >= 1")
        if b.refresh == "every" and b.refresh_every < 1:
            raise UserError("bank.refresh=every needs bank.refresh_every=N (sequences per bank), N >= 1")
