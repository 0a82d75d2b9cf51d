"""Enough data for the whole run, checked before any process starts (train/entry.py): the training sequences
every step reads (all steps, every data-parallel rank's rows) and the validation sequences every evaluation
reads, against what the shard manifests hold. Without it a short dataset fails at the step that runs past its
end, with no checkpoint of the steps before (issue 25). Data generated on the fly (nca_stream, dyck, the NCA val
split without data.val_shards) never runs out.

`data.epochs=N` allows N passes over finite training shards (text_shards, nca_shards): sequence i of the run
reads row i mod the shards' length, in the same order each pass (train/data.py); the number of passes a run
makes is logged.
"""

from __future__ import annotations

import logging
import math

from nca_scale.errors import UserError
from nca_scale.train.config import TrainConfig, text_manifest

log = logging.getLogger(__name__)


def held(source: str, url: str) -> int:
    """Sequences held by the shards at `url` (their manifest only)."""
    if source == "text_shards":
        return int(text_manifest(url)["sequences"])
    from nca_scale.data import ShardReader

    reader = ShardReader(url)
    return reader.stop if reader.start == 0 else 0  # a training run reads indices from 0


def check(cfg: TrainConfig) -> None:
    """UserError naming the numbers and the fix when the shards hold too little for `cfg`."""
    data, batch, dp = cfg.data, cfg.batch_size, cfg.data_parallel
    if data.source not in ("text_shards", "nca_shards"):
        return
    need, have = cfg.total_steps * batch, held(data.source, data.shards)
    passes = need / have if have else math.inf
    if passes > data.epochs:
        fix = (f"train at most steps={have * data.epochs // batch}, " if have >= batch else "lower batch_size, ")
        more = "tokenize more text" if data.source == "text_shards" else "generate more (nca-scale generate tokens=)"
        again = f", or set data.epochs={math.ceil(passes)} to read it {math.ceil(passes)} times" if have else ""
        raise UserError(f"the run reads {need:,} training sequences ({cfg.total_steps:,} steps x batch_size {batch}: "
                        f"{batch // dp} per step on each of the dp={dp} data-parallel ranks) but data.shards="
                        f"{data.shards} holds {have:,}{f' ({passes:.2f} passes, data.epochs={data.epochs})' if have else ''}; "
                        f"{fix}{more}{again}")
    if data.epochs > 1:
        log.info(f"data: the run reads {have:,} training sequences {passes:.2f} times over {cfg.total_steps:,} steps "
                 f"(data.epochs={data.epochs} allows {data.epochs})")
    if cfg.eval_every and data.val_shards:
        need_val, have_val = cfg.eval_batches * batch, held(data.source, data.val_shards)
        if need_val > have_val:
            fix = (f"set eval_batches={have_val // batch} or fewer" if have_val >= batch else
                   "lower batch_size")
            raise UserError(f"each evaluation reads {need_val:,} validation sequences (eval_batches={cfg.eval_batches} "
                            f"x batch_size {batch}) but data.val_shards={data.val_shards} holds {have_val:,}; {fix}, or "
                            "tokenize more validation text")
