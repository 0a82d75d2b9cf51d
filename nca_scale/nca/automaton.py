"""Batched rollout of many rules at once, each with its own weights, on CPU or CUDA through one code path.

Per step and cell: hidden = relu(sum_k table[k, state of neighbour k] + h0) (a fused `embedding_bag`
gather-sum, see rules.fold), logits = hidden @ w3 + b3, then the next state is drawn from
categorical((logits + identity_bias * onehot(state)) / temperature).

Sampling is exact in distribution without drawing noise for every cell: with Gumbel-max, a cell can leave
its argmax only when the top-2 logit gap is below temperature * GUMBEL_SPAN (the largest difference two of
our bounded Gumbel draws can have). Only those cells get noise, keyed by (trajectory, step, cell, state),
so the result does not depend on which other trajectories share the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nca_scale.nca import rng
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.rules import RuleTables


class Automaton:
    def __init__(self, cfg: NCAConfig, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        g = cfg.grid
        rows = torch.arange(g).view(g, 1).expand(g, g)
        cols = torch.arange(g).view(1, g).expand(g, g)
        taps = []
        for dy in (-1, 0, 1):  # kernel tap k = (dy+1)*3 + (dx+1) reads neighbour (row+dy, col+dx), wrapped
            for dx in (-1, 0, 1):
                taps.append(((rows + dy) % g) * g + (cols + dx) % g)
        self.neighbours = torch.stack(taps, -1).view(g * g, 9).to(self.device)  # (HW, 9)
        self.tap_offset = (torch.arange(9) * cfg.states).to(self.device)  # row of tap k in a rule's table

    # ---- initial states -------------------------------------------------------------------------------
    def initial_state(self, traj_keys: torch.Tensor) -> torch.Tensor:
        """(B, HW) int64 states. reference: cells i.i.d. from softmax(z), z ~ N(0, I) per trajectory."""
        cfg, dev = self.cfg, self.device
        cells = torch.arange(cfg.grid * cfg.grid, device=dev)
        u = rng.uniform(rng.INIT_CELLS, traj_keys[:, None], cells[None, :], device=dev)
        if cfg.init_state == "uniform":
            return (u * cfg.states).long().clamp_(max=cfg.states - 1)
        z = rng.normal(rng.INIT_Z, traj_keys[:, None], torch.arange(cfg.states, device=dev)[None, :], device=dev)
        cdf = torch.softmax(z, -1).cumsum(-1)
        return torch.searchsorted(cdf, u, right=True).clamp_(max=cfg.states - 1)

    # ---- dynamics -------------------------------------------------------------------------------------
    def logits(self, state: torch.Tensor, t: RuleTables) -> torch.Tensor:
        """(B, HW, S) logits of the rule network (identity bias included) for states (B, HW)."""
        cfg = self.cfg
        b, hw = state.shape
        hd = t.table.shape[-1]
        rule_base = (torch.arange(b, device=self.device) * (9 * cfg.states)).view(b, 1, 1)
        idx = state[:, self.neighbours] + (self.tap_offset + rule_base)  # (B, HW, 9)
        hidden = F.embedding_bag(idx.view(b * hw, 9), t.table.view(-1, hd), mode="sum").view(b, hw, hd)
        hidden = torch.relu_(hidden + t.h0[:, None, :])
        out = torch.baddbmm(t.b3[:, None, :], hidden, t.w3t)
        if cfg.identity_bias:
            out.scatter_add_(2, state[..., None], torch.full_like(out[..., :1], cfg.identity_bias))
        return out

    def step(self, state: torch.Tensor, t: RuleTables, traj_keys: torch.Tensor, step: int) -> torch.Tensor:
        logits = self.logits(state, t)
        tau = self.cfg.temperature
        if tau == 0:
            return logits.argmax(-1)
        top = logits.topk(2, dim=-1)
        nxt = top.indices[..., 0]
        ambiguous = (top.values[..., 0] - top.values[..., 1]) < tau * rng.GUMBEL_SPAN
        bi, ci = ambiguous.nonzero(as_tuple=True)
        if bi.numel():
            s = self.cfg.states
            counters = ci[:, None] * s + torch.arange(s, device=self.device)[None, :]
            g = rng.gumbel(rng.NOISE, traj_keys[bi][:, None], step, counters, device=self.device)
            nxt[bi, ci] = (logits[bi, ci] / tau + g).argmax(-1)
        return nxt

    def rollout(
        self, t: RuleTables, traj_keys: torch.Tensor, frames: int, start: int, dt: int,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Frames s_start, s_start+dt, ... (`frames` of them) as (B, frames, grid, grid) uint8."""
        cfg = self.cfg
        if state is None:
            state = self.initial_state(traj_keys)
        b = state.shape[0]
        out = torch.empty(b, frames, cfg.grid * cfg.grid, dtype=torch.uint8, device=self.device)
        last = start + (frames - 1) * dt
        for step in range(last + 1):
            if step >= start and (step - start) % dt == 0:
                out[:, (step - start) // dt] = state
            if step < last:
                state = self.step(state, t, traj_keys, step)
        return out.view(b, frames, cfg.grid, cfg.grid)
