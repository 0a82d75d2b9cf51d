"""The fused C step (nca_scale/nca/native.py, csrc/step.c) gives the bits of the torch step.

The fused step and the torch step must agree exactly, on every config shape the kernel is specialised for
(grid not a multiple of the 4-cell unroll, hidden and states not multiples of the vector width, int32
states, identity bias, a non-zero output bias, tau 0 and tau > 0 with many sampled cells), or sequences would
depend on whether a machine has a C compiler."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nca_scale.nca import native
from nca_scale.nca.automaton import Automaton
from nca_scale.nca.bank import rule_tables
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.rules import RuleTables

CASES = {
    "paper": NCAConfig(),
    "argmax": NCAConfig(temperature=0.0),
    "hot": NCAConfig(temperature=0.05),  # most cells sampled: exercises the kernel's hashes
    "identity-bias": NCAConfig(identity_bias=0.3, init_state="uniform"),
    "g7-s3-h5": NCAConfig(grid=7, states=3, patch=1, hidden=5, conv_channels=2, temperature=1e-2, seq_len=100),
    "g5-s17-h20": NCAConfig(grid=5, states=17, patch=1, hidden=20, temperature=1e-3, seq_len=60, burn_in=2),
    "s300-int32": NCAConfig(grid=6, states=300, patch=1, seq_len=100, token_dtype="int32", temperature=1e-3),
}


def _pair(cfg: NCAConfig) -> tuple[Automaton, Automaton]:
    fused, plain = Automaton(cfg), Automaton(cfg, fused=False)
    if fused.kernel is None:
        pytest.skip(f"fused step unavailable here: {fused.fused_off}")
    assert plain.kernel is None
    return fused, plain


@pytest.mark.parametrize("name", list(CASES))
def test_fused_step_equals_torch_step(name):
    """Both C loops (the AVX-512 one of 16 cells per vector, where the CPU has it, and the portable one)."""
    cfg = CASES[name]
    fused, plain = _pair(cfg)
    ids = torch.arange(37)  # an odd batch
    tables = rule_tables(cfg, "train", 0, ids)
    keys = ids * 7919 + 5
    with torch.inference_mode():
        a = fused.rollout(tables, keys, 12, 3, 2)
        b = plain.rollout(tables, keys, 12, 3, 2)
        fused.kernel = native.step_kernel(cfg.grid, cfg.states, cfg.hidden, fused.state_dtype, portable=True)
        c = fused.rollout(tables, keys, 12, 3, 2)
    assert a.dtype == b.dtype == fused.state_dtype
    assert torch.equal(a, b)
    assert torch.equal(c, b)
    assert (a[:, 1:] != a[:, :-1]).any()  # the automata move: the comparison is not between frozen grids


def test_fused_step_with_output_bias_and_sampled_cells():
    cfg = NCAConfig(temperature=0.02)
    fused, plain = _pair(cfg)
    ids = torch.arange(16)
    t = rule_tables(cfg, "train", 0, ids)
    g = torch.Generator().manual_seed(0)
    t = RuleTables(t.table, t.h0 + 0.1 * torch.randn(t.h0.shape, generator=g), t.w3t,
                   0.05 * torch.randn(t.b3.shape, generator=g))
    keys = ids + 1
    with torch.inference_mode():
        state = fused.initial_state(keys)
        sampled = 0
        for step in range(6):
            logits = plain.logits(state, plain.prepare(t))
            top2 = logits.topk(2, -1).values
            sampled += int(((top2[..., 0] - top2[..., 1]) < cfg.temperature * 30).sum())
            a = fused.step(state, fused.prepare(t), keys, step)
            b = plain.step(state, plain.prepare(t), keys, step)
            assert torch.equal(a, b), step
            state = a
    assert sampled > 100  # the sampling path ran, not only the argmax one


@pytest.mark.slow
def test_native_off_falls_back_to_the_same_sequences(tmp_path):
    """NCA_SCALE_NATIVE=0 (as on a machine without a compiler): the torch step, the same bank and tokens."""
    code = (
        "import numpy as np, torch; from nca_scale.nca.config import NCAConfig, ComplexityConfig;"
        "from nca_scale.nca.stream import NCAStream;"
        "s = NCAStream(NCAConfig(complexity=ComplexityConfig(lo=0.5, hi=1.0), seq_len=200));"
        "print(s.automaton.fused_off); b, c, sc = s.rules(np.arange(40));"
        "np.save(%r, np.concatenate([s.sequences(np.arange(40)).numpy().ravel(), c, sc.view(np.int64)]))"
    )
    out = {}
    for flag in ("1", "0"):
        path = str(tmp_path / f"native{flag}.npy")
        env = {**os.environ, "NCA_SCALE_NATIVE": flag}
        done = subprocess.run([sys.executable, "-c", code % path], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        out[flag] = (done.stdout.strip(), np.load(path))
    if out["1"][0] != "None":
        pytest.skip(f"fused step unavailable here: {out['1'][0]}")
    assert out["0"][0] == "turned off by NCA_SCALE_NATIVE=0"
    assert np.array_equal(out["1"][1], out["0"][1])


def test_failed_build_is_unavailable_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NCA_SCALE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native._compiler.cache_clear()
    try:
        with pytest.raises(native.Unavailable):
            native._build("step.c", ["-DG=3"])
    finally:
        native._compiler.cache_clear()
    assert not list(tmp_path.rglob("*.so"))


def test_unwritable_cache_is_unavailable_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NCA_SCALE_CACHE", str(blocker))
    native.step_kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="fused CPU step unavailable"):
            auto = Automaton(dataclasses.replace(NCAConfig(), grid=10))
    finally:
        native.step_kernel.cache_clear()
    assert auto.kernel is None and "failed" in auto.fused_off


def test_library_cache_is_keyed_by_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("NCA_SCALE_CACHE", str(tmp_path))
    native.step_kernel.cache_clear()
    try:
        a = dataclasses.replace(NCAConfig(), grid=9)
        kernels = [Automaton(a), Automaton(dataclasses.replace(a, states=4)), Automaton(a)]
    finally:
        native.step_kernel.cache_clear()
    if kernels[0].kernel is None:
        pytest.skip(kernels[0].fused_off)
    built = sorted(p.name for p in (tmp_path / "native").glob("*.so"))
    assert len(built) == 2 and all(name.startswith("step_") for name in built)
    assert not list((tmp_path / "native").glob("*.tmp*"))


def test_fused_step_on_a_large_grid():
    """A grid whose padded copy has more cells than int16 holds (the kernel's cell offsets)."""
    cfg = NCAConfig(grid=190, temperature=1e-3)
    fused, plain = _pair(cfg)
    ids = torch.arange(3)
    tables = rule_tables(cfg, "train", 0, ids)
    keys = ids + 11
    with torch.inference_mode():
        a = fused.rollout(tables, keys, 3, 1, 1)
        b = plain.rollout(tables, keys, 3, 1, 1)
    assert torch.equal(a, b) and (a[:, 1:] != a[:, :-1]).any()
