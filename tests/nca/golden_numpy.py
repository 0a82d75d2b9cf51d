"""A deliberately plain float64 NumPy re-implementation of the reference NCA (paper.md §1-2).

It follows the authors' JAX/Flax code step by step, not the fast path in `nca_scale.nca`:
one-hot the state, `np.pad(onehot, 1, mode="wrap")` on *all three* axes (what `jnp.pad(x, 1, mode="wrap")`
does, so the channel axis grows by two when `wrap_channels`), a VALID 3x3 cross-correlation with a Flax
kernel of shape (kh, kw, in, out), a 1x1 conv, ReLU, a 1x1 conv to logits. Nothing is folded or fused, and
nothing here imports from `nca_scale`, so the two implementations share no code.
"""

from __future__ import annotations

import gzip
import io

import numpy as np


def flax_params(w1, b1, w2, b2, w3, b3) -> dict:
    """Torch-layout weights of one rule -> Flax layout, float64.

    w1 (C, Cin, 3, 3) -> kernel (3, 3, Cin, C); w2 (Hd, C) -> (C, Hd); w3 (S, Hd) -> (Hd, S).
    """
    f = lambda t: np.asarray(t, dtype=np.float64)  # noqa: E731
    return {
        "k1": f(w1).transpose(2, 3, 1, 0),
        "b1": f(b1),
        "k2": f(w2).T,
        "b2": f(b2),
        "k3": f(w3).T,
        "b3": f(b3),
    }


def onehot(state: np.ndarray, states: int) -> np.ndarray:
    """(H, W) int -> (H, W, S) float64."""
    return (np.asarray(state)[..., None] == np.arange(states)).astype(np.float64)


def conv_valid(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flax/lax VALID cross-correlation: out[i, j, c] = sum_{a, b, ch} x[i+a, j+b, ch] * k[a, b, ch, c] + bias."""
    kh, kw, cin, cout = k.shape
    h, w, c = x.shape
    assert c == cin, (c, cin)
    oh, ow = h - kh + 1, w - kw + 1
    out = np.zeros((oh, ow, cout))
    for a in range(kh):  # no kernel flip: tap (a, b) reads input pixel (i + a, j + b)
        for bb in range(kw):
            out += x[a : a + oh, bb : bb + ow, :] @ k[a, bb]
    return out + b


def logits(state: np.ndarray, p: dict, states: int, wrap_channels: bool, identity_bias: float = 0.0) -> np.ndarray:
    """(H, W) state -> (H, W, S) logits + identity_bias * onehot(state)."""
    x = onehot(state, states)
    if wrap_channels:
        padded = np.pad(x, 1, mode="wrap")  # (H+2, W+2, S+2): jnp.pad(x, pad_width=1, mode='wrap')
    else:
        padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="wrap")
    h = conv_valid(padded, p["k1"], p["b1"])  # Conv(C, 3x3, VALID)
    h = h @ p["k2"] + p["b2"]  # Conv(Hd, 1x1)
    h = np.maximum(h, 0.0)  # ReLU
    out = h @ p["k3"] + p["b3"]  # Conv(S, 1x1)
    return out + identity_bias * x


def rollout(state0: np.ndarray, p: dict, states: int, wrap_channels: bool, identity_bias: float,
            frames: int, start: int, dt: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Argmax (temperature 0) dynamics. Returns frames s_start, s_start+dt, ... as (F, H, W) and the logits of
    every step taken (step t maps s_t -> s_{t+1})."""
    state = np.asarray(state0, dtype=np.int64)
    last = start + (frames - 1) * dt
    out, all_logits = [], []
    for t in range(last + 1):
        if t >= start and (t - start) % dt == 0:
            out.append(state.copy())
        if t < last:
            lg = logits(state, p, states, wrap_channels, identity_bias)
            all_logits.append(lg)
            state = lg.argmax(-1)
    return np.stack(out), all_logits


def patch_ids(frame: np.ndarray, patch: int, states: int) -> list[int]:
    """Row-major patches; within a patch the cells row-major, top-left least significant."""
    g = frame.shape[0]
    ids = []
    for py in range(0, g, patch):
        for px in range(0, g, patch):
            value, k = 0, 0
            for dy in range(patch):
                for dx in range(patch):
                    value += int(frame[py + dy, px + dx]) * states**k
                    k += 1
            ids.append(value)
    return ids


def tokens(frames: np.ndarray, patch: int, states: int, seq_len: int) -> np.ndarray:
    """<grid> patches </grid> per frame, concatenated, truncated to seq_len + 1 tokens."""
    start = states ** (patch * patch)
    seq = []
    for f in frames:
        seq += [start] + patch_ids(f, patch, states) + [start + 1]
    return np.asarray(seq[: seq_len + 1], dtype=np.int64)


def gzip_score(frames: np.ndarray, patch: int, states: int) -> float:
    """The reference's gzip_complexity over the delimiter-free patch ids as int32 (little-endian) bytes."""
    ids = np.asarray([patch_ids(f, patch, states) for f in frames], dtype="<i4").reshape(-1)
    raw = ids.tobytes()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as f:
        f.write(raw)
    return len(buf.getvalue()) / len(raw)
