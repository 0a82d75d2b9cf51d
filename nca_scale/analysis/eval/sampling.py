"""Sampling completions for prompt-based tasks: batches of prompts, n samples each, through the KV cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from nca_scale.model.generate import SamplingConfig, generate

log = logging.getLogger(__name__)


def complete(model, tok, prompts: Sequence[str], sc: SamplingConfig, batch_rows: int,
             prefix: Sequence[int] = ()) -> list[list[dict]]:
    """For each prompt, sc.n samples ({"text", "tokens", "finish"}); prompts are encoded as `prefix` + ids."""
    per_batch = max(1, batch_rows // sc.n)
    stop_ids = tuple(sc.stop_ids) or ((tok.eos_id,) if tok.eos_id is not None else ())
    sc = SamplingConfig(**{**sc.__dict__, "stop_ids": stop_ids, "vocab_limit": tok.vocab_size})
    out: list[list[dict]] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), per_batch):
        chunk = prompts[i:i + per_batch]
        ids = [list(prefix) + tok.encode(p) for p in chunk]
        ids = [x if x else ([tok.eos_id] if tok.eos_id is not None else [0]) for x in ids]
        batch_sc = SamplingConfig(**{**sc.__dict__, "seed": sc.seed + i})
        out += generate(model, ids, batch_sc, decode=tok.decode)
        log.info(f"generated {len(out)}/{len(prompts)} prompts x {sc.n} samples ({time.perf_counter() - t0:.0f} s)")
    return out
