"""gzip complexity of a text corpus, measured the way the NCA filter measures rules, and the closest NCA band.

The NCA filter scores a rule by gzip-compressing its probe trajectory: T = probe_frames x patches_per_frame
patch tokens (360 for the reference), each as an int32 little-endian integer, gzip level 9, score =
compressed / raw bytes (`nca.complexity`). A corpus is scored the same way on windows of T of its tokens:
documents drawn by hash (as tokenizer training samples them), encoded with the given tokenizer (or as UTF-8
bytes), each followed by an end-of-document id as when packing for training, concatenated, cut into
non-overlapping windows of T tokens; `windows` of them, evenly spaced, are scored with the same function.

The recommendation is the band whose in-band random-rule scores are closest to the corpus's window scores in
1-Wasserstein distance (mean absolute difference of the two quantile functions). Caveat: text ids and NCA
patch ids are different alphabets with different frequency profiles (docs/analysis.md): equal scores mean
"gzip finds the same fraction of redundancy in the same number of int32 symbols", not equal structure, and
the absolute corpus score moves with the tokenizer. Rankings between corpora under one tokenizer are the
more meaningful output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from nca_scale.data.text.corpus import Corpus
from nca_scale.data.text.tokenizer import Tokenizer, _sample
from nca_scale.errors import UserError
from nca_scale.nca.complexity import BANDS, gzip_token_scores, in_band
from nca_scale.nca.config import NCAConfig
from nca_scale.nca.stats import quantiles

BYTES = "bytes"  # tokenizer=bytes: UTF-8 bytes as ids, NUL between documents


def probe_tokens(cfg: NCAConfig) -> int:
    """Patch tokens (delimiters excluded) in the trajectory the NCA filter scores."""
    frames = cfg.complexity.probe_frames if cfg.complexity.probe == "reference" else cfg.frames
    return frames * cfg.patches_per_frame


def _ids(texts: Iterable[str], tokenizer: Tokenizer | None, batch: int = 256) -> Iterator[np.ndarray]:
    if tokenizer is None:
        for t in texts:
            yield np.frombuffer(t.encode("utf-8") + b"\x00", dtype=np.uint8)
        return
    buf: list[str] = []
    for t in texts:
        buf.append(t)
        if len(buf) == batch:
            yield from (np.array([*ids, tokenizer.eos_id]) for ids in tokenizer.encode(buf))
            buf = []
    yield from (np.array([*ids, tokenizer.eos_id]) for ids in tokenizer.encode(buf))


def token_windows(texts: Iterable[str], tokenizer: Tokenizer | None, window: int, windows: int) -> np.ndarray:
    """(n <= windows, window) int64: evenly spaced non-overlapping windows of the concatenated token stream."""
    stream = np.concatenate(list(_ids(texts, tokenizer)) or [np.empty(0, dtype=np.int64)]).astype(np.int64)
    rows = stream[: len(stream) // window * window].reshape(-1, window)
    if len(rows) == 0:
        raise UserError(f"the corpus sample holds {len(stream)} tokens, fewer than one window of {window}; "
                        "raise max_bytes= or use a larger corpus")
    pick = np.unique(np.linspace(0, len(rows) - 1, min(windows, len(rows))).round().astype(int))
    return rows[pick]


def wasserstein1(a: np.ndarray, b: np.ndarray, points: int = 201) -> float:
    """1-Wasserstein distance of two empirical distributions: mean |quantile_a(u) - quantile_b(u)| over u."""
    u = np.linspace(0.0, 1.0, points)
    return float(np.mean(np.abs(np.quantile(a, u) - np.quantile(b, u))))


def recommend(corpus_scores: np.ndarray, rule_scores: np.ndarray) -> dict:
    """Per band: random rules in it, their score quantiles and the distance to the corpus; the closest band."""
    bands = {}
    for name, (lo, hi) in BANDS.items():
        inside = rule_scores[in_band(lo, hi, rule_scores)]
        bands[name] = {"lo": lo, "hi": hi, "rules": int(inside.size),
                       "quantiles": quantiles(inside) if inside.size else None,
                       "distance": wasserstein1(corpus_scores, inside) if inside.size else None}
    scored = {k: v["distance"] for k, v in bands.items() if v["distance"] is not None}
    if not scored:
        raise UserError("no random rule fell in any band; raise rules=")
    median = float(np.median(corpus_scores))
    holding = [k for k, (lo, hi) in BANDS.items() if lo < median < hi]
    return {"bands": bands, "recommended": min(scored, key=scored.get),
            "median_in_band": holding[0] if holding else None}


def corpus_scores(corpus: Corpus, tokenizer: Tokenizer | None, window: int, windows: int, max_bytes: int,
                  threads: int = 1) -> np.ndarray:
    rows = token_windows(_sample(corpus, max_bytes), tokenizer, window, windows)
    return gzip_token_scores(rows, threads)
