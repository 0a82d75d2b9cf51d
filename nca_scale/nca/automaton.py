"""Batched rollout of many rules at once, each with its own weights, on CPU or CUDA through one code path.

Per step and cell: hidden = relu(sum_k table[k, state of neighbour k] + h0) (a fused `embedding_bag`
gather-sum, see rules.fold), logits = hidden @ w3 + b3, then the next state is drawn from
categorical((logits + identity_bias * onehot(state)) / temperature).

The float operations and their order are fixed (step.c's header lists them): the 9 table rows summed in
tap order, the 16 products of the last layer summed in order, each rounded (no library matmul, whose
summation order varies with the CPU and BLAS build). On CPU the fused C step (csrc/step.c, native.py)
runs them per cell; elsewhere, or without a C compiler, the torch ops below do; both give the same bits.

Sampling is exact in distribution without drawing noise for every cell: with Gumbel-max, a cell can leave
its argmax only when the top-2 logit gap is below temperature * GUMBEL_SPAN (the largest difference two of
our bounded Gumbel draws can have). Only those cells get noise, keyed by (trajectory, step, cell, state),
so the result does not depend on which other trajectories share the batch.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from nca_scale.nca import native, rng
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.rules import RuleTables


class Automaton:
    def __init__(self, cfg: NCAConfig, device: str | torch.device = "cpu", fused: bool = True):
        """`fused`: take the fused C step where it can be built (CPU only); `fused_off` says why not."""
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
        # States are stored in the smallest integer type that holds them (uint8 for the paper's 10).
        self.state_dtype = torch.uint8 if cfg.states <= 255 else torch.int32
        # weight S - s for state s: amax over near states of the weight picks the first one (argmax's tie rule)
        self._first_weight = torch.arange(cfg.states, 0, -1, device=self.device, dtype=self.state_dtype).view(1, -1, 1)
        # weight S + s: summed over the near states it gives S + s for a lone near state s and >= 2S for two
        # or more, so one pass yields both the argmax and the cells to sample (see `step`); small integers,
        # exact in float32
        self._count_weight = torch.arange(cfg.states, 2 * cfg.states, device=self.device, dtype=torch.float32)
        self._gather_cache: tuple[torch.Tensor, ...] | None = None  # per batch size, see _gather_index
        self._noise_cache: tuple[torch.Tensor, torch.Tensor] | None = None  # see _noise_keys
        # (tables, their kernel layout as tensors, and as pointers), see _fused_tables
        self._fused_cache: tuple = (None, (), ())
        self._fused_out: tuple[torch.Tensor, ...] | None = None  # ambiguous-cell buffers
        # the near-tie threshold as the torch step compares it (a float32 scalar)
        self._near = float(torch.tensor(-cfg.temperature * rng.GUMBEL_SPAN, dtype=torch.float32))
        self.kernel, self.fused_off = None, "fused=False"
        if fused and self.device.type != "cpu":
            self.fused_off = f"no fused step for {self.device.type}"
        elif fused:
            try:
                self.kernel = native.step_kernel(cfg.grid, cfg.states, cfg.hidden, self.state_dtype)
                self.fused_off = None
            except native.Unavailable as e:
                self.fused_off = str(e)
                if not native.turned_off():
                    warnings.warn(f"fused CPU step unavailable ({e}); the torch step runs instead: the same "
                                  "sequences, ~10x slower steps", RuntimeWarning, stacklevel=2)

    # ---- initial states -------------------------------------------------------------------------------
    def initial_state(self, traj_keys: torch.Tensor) -> torch.Tensor:
        """(B, HW) states (uint8, or int32 beyond 255 states).

        reference: cells i.i.d. from softmax(z), z ~ N(0, I) drawn once per trajectory; uniform: i.i.d. uniform.
        """
        cfg, dev = self.cfg, self.device
        cells = torch.arange(cfg.grid * cfg.grid, device=dev)
        u = rng.uniform(rng.INIT_CELLS, traj_keys[:, None], cells[None, :], device=dev)
        if cfg.init_state == "uniform":
            return (u * cfg.states).long().clamp_(max=cfg.states - 1).to(self.state_dtype)
        z = rng.normal(rng.INIT_Z, traj_keys[:, None], torch.arange(cfg.states, device=dev)[None, :], device=dev)
        cdf = torch.softmax(z, -1).cumsum(-1)
        return torch.searchsorted(cdf, u, right=True).clamp_(max=cfg.states - 1).to(self.state_dtype)

    # ---- dynamics -------------------------------------------------------------------------------------
    def prepare(self, t: RuleTables) -> RuleTables:
        """Fold the hidden bias h0 into tap 0 of the table, so a step is gather-sum -> relu -> bmm."""
        table = t.table.clone()
        table[:, 0] += t.h0[:, None, :]
        return RuleTables(table, torch.zeros_like(t.h0), t.w3t, t.b3)

    def _gather_index(self, state: torch.Tensor) -> torch.Tensor:
        """(B, HW, 9) int32 rows of the flattened tables: rule b, tap k, state of neighbour k.

        Row = b*9S + k*S + state: the state plus its rule's offset is formed once per cell (B*HW), gathered
        to the 9 taps through an int32 index, and the tap offset added in place (cheaper than gathering uint8
        states and adding a full (B, HW, 9) offset tensor)."""
        b, hw = state.shape
        if self._gather_cache is None or self._gather_cache[0].shape[0] != b * hw * 9:
            cells = (torch.arange(b, device=self.device) * hw).view(b, 1, 1) + self.neighbours
            rules = (torch.arange(b, device=self.device) * (9 * self.cfg.states)).view(b, 1).to(torch.int32)
            self._gather_cache = (cells.reshape(-1).to(torch.int32), rules, self.tap_offset.to(torch.int32))
        cells, rules, taps = self._gather_cache
        code = torch.add(state, rules)  # (B, HW) int32
        return code.view(-1).index_select(0, cells).view(b, hw, 9).add_(taps)

    def _logits_by_state(self, state: torch.Tensor, t: RuleTables) -> torch.Tensor:
        """(B, S, HW) logits: states on the middle axis so per-state slices are contiguous (see _top2)."""
        b, hw = state.shape
        hd = t.table.shape[-1]
        idx = self._gather_index(state)  # (B, HW, 9) rows of the flattened tables
        hidden = F.embedding_bag(idx.view(b * hw, 9), t.table.view(-1, hd), mode="sum").view(b, hw, hd)
        if t.h0.any():  # zero once `prepare` folded it into the table
            hidden += t.h0[:, None, :]
        # hidden @ w3 as HD rounded products summed in order (see the module docstring), states x cells
        h = hidden.relu_().transpose(1, 2).contiguous()  # (B, Hd, HW)
        w = t.w3t[:, :, :, None]  # (B, Hd, S, 1)
        out = torch.mul(w[:, 0], h[:, None, 0])
        product = torch.empty_like(out)
        for k in range(1, hd):
            out += torch.mul(w[:, k], h[:, None, k], out=product)
        if t.b3.any():  # biases start at zero (Flax init); skip the pass when they are
            out += t.b3[:, :, None]
        if self.cfg.identity_bias:
            out.scatter_add_(1, state[:, None, :].long(), torch.full_like(out[:, :1], self.cfg.identity_bias))
        return out

    def logits(self, state: torch.Tensor, t: RuleTables) -> torch.Tensor:
        """(B, HW, S) logits of the rule network (identity bias included) for states (B, HW)."""
        return self._logits_by_state(state, t).transpose(1, 2)

    def step(self, state: torch.Tensor, t: RuleTables, traj_keys: torch.Tensor, step: int) -> torch.Tensor:
        if self.kernel is not None:
            return self._step_fused(state, t, traj_keys, step)
        logits = self._logits_by_state(state, t)  # (B, S, HW)
        s = self.cfg.states
        tau = self.cfg.temperature
        # `near`: states whose logit is within tau*GUMBEL_SPAN of the cell's maximum (just the argmax, and any
        # exact ties, when tau = 0). A cell with one near state takes it: sampling cannot move it; cells with
        # two or more are sampled below (at tau = 0 the first of them wins, argmax's tie rule). Reductions over
        # the short state axis are amax/matmul on contiguous slices, several times faster than argmax/topk.
        top = logits.amax(1, keepdim=True)
        if tau == 0:
            near = logits >= top
            return s - (near.view(torch.uint8) * self._first_weight).amax(1)
        # As 0/1 floats, from the difference to the maximum (a scalar comparison, faster than comparing with a
        # broadcast threshold), weighted and summed over states in one small batched matmul.
        near = torch.sub(logits, top).ge_(-tau * rng.GUMBEL_SPAN)
        b, _, hw = logits.shape
        code = torch.bmm(self._count_weight.view(1, 1, s).expand(b, 1, s), near).view(b, hw)
        nxt = (code - s).to(self.state_dtype)  # the argmax wherever exactly one state is near
        bi, ci = (code >= 2 * s).nonzero(as_tuple=True)
        if bi.numel():
            counters = ci[:, None] * s + torch.arange(s, device=self.device)[None, :]
            g = rng.gumbel(step, counters, device=self.device, start=self._noise_keys(traj_keys)[bi][:, None])
            nxt[bi, ci] = (logits[bi, :, ci] / tau + g).argmax(-1).to(nxt.dtype)
        return nxt

    def _step_fused(self, state: torch.Tensor, t: RuleTables, traj_keys: torch.Tensor, step: int) -> torch.Tensor:
        """`step` through step.c: the kernel decides every cell with one near state and hands back the others
        (flat index, logits, uniforms from the same hashes); their Gumbel noise takes torch's log, as in
        `step`, on a tensor of the same shape, and nca_resolve takes the argmax of logits / tau + noise."""
        cfg = self.cfg
        b, hw = state.shape
        tau = cfg.temperature
        if self._fused_cache[0] is not t:
            self._fused_cache = (t, *self._fused_tables(t))
        table, w3, b3 = self._fused_cache[2]
        if self._fused_out is None or self._fused_out[0].shape[0] < b * hw:
            self._fused_out = tuple(torch.empty(b * hw, *shape, dtype=dtype) for shape, dtype in
                                    (((), torch.int64), ((cfg.states,), torch.float32), ((cfg.states,), torch.float32)))
        amb_idx, amb_logits, amb_u = self._fused_out
        state = state.contiguous()
        nxt = torch.empty_like(state)
        keys = self._noise_keys(traj_keys).contiguous() if tau else None
        n = self.kernel.nca_step(
            state.data_ptr(), b, table, w3, b3, cfg.identity_bias, self._near, int(tau == 0),
            native.ptr(keys), step, nxt.data_ptr(), amb_idx.data_ptr(), amb_logits.data_ptr(), amb_u.data_ptr(),
        )
        if n < 0:
            raise MemoryError("the fused NCA step could not allocate its grid buffers")
        if n:
            y = amb_u[:n]  # -> log(-log(u)) = -gumbel, in place
            torch.log(y, out=y)
            torch.log(y.neg_(), out=y)
            self.kernel.nca_resolve(n, amb_idx.data_ptr(), amb_logits.data_ptr(), y.data_ptr(), tau, nxt.data_ptr())
        return nxt

    def _fused_tables(self, t: RuleTables) -> tuple[tuple, tuple[int, int, int | None]]:
        """The rules' tables as the kernel reads them (rows padded with zeros to its vector width), and their
        pointers; the cache holds both, so the tensors live as long as the pointers are used."""
        b, _, s, hd = t.table.shape
        table, w3 = t.table, t.w3t
        if hd != native.padded(hd) or not table.is_contiguous():
            table = torch.zeros(b, 9, s, native.padded(hd), dtype=torch.float32)
            table[..., :hd] = t.table
        if s != native.padded(s) or not w3.is_contiguous():
            w3 = torch.zeros(b, hd, native.padded(s), dtype=torch.float32)
            w3[:, :, :s] = t.w3t
        b3 = t.b3.contiguous() if t.b3.any() else None
        return (table, w3, b3), (table.data_ptr(), w3.data_ptr(), native.ptr(b3))

    def _noise_keys(self, traj_keys: torch.Tensor) -> torch.Tensor:
        """hash32(NOISE, key) of each trajectory, the prefix of all its noise draws (rng.hash32 `start`):
        folded once per rollout rather than at every step for every sampled cell."""
        if self._noise_cache is None or self._noise_cache[0] is not traj_keys:
            self._noise_cache = (traj_keys, rng.hash32(rng.NOISE, traj_keys, device=self.device))
        return self._noise_cache[1]

    def rollout(
        self, t: RuleTables, traj_keys: torch.Tensor, frames: int, start: int, dt: int,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Frames s_start, s_start+dt, ... (`frames` of them) as (B, frames, grid, grid) of `state_dtype`."""
        cfg = self.cfg
        if state is None:
            state = self.initial_state(traj_keys)
        t = self.prepare(t)
        b = state.shape[0]
        out = torch.empty(b, frames, cfg.grid * cfg.grid, dtype=self.state_dtype, device=self.device)
        last = start + (frames - 1) * dt
        for step in range(last + 1):
            if step >= start and (step - start) % dt == 0:
                out[:, (step - start) // dt] = state
            if step < last:
                state = self.step(state, t, traj_keys, step)
        return out.view(b, frames, cfg.grid, cfg.grid)
