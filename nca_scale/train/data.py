"""Training batches as a pure function of (seed, step).

The global batch of step s is sequences [s*B, (s+1)*B) of the training source (B = batch_size), whatever
the world size; data-parallel rank r of D takes the contiguous rows [r*B/D, (r+1)*B/D) and splits them into
micro-batches. Evaluation reads the first `eval_batches * B` sequences of the "val" split. A resumed run, or
one on a different DP size, therefore sees exactly the global batches it would have seen. The NCA seed lives
in the data config (data.nca.seed), so (seed, step) fixes every token.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from nca_scale.errors import UserError
from nca_scale.train.config import DataConfig

log = logging.getLogger(__name__)


class SequenceSource(Protocol):
    """Anything that maps global sequence indices to (n, seq_len + 1) tokens: the NCA stream, NCA shards,
    and (next) text shards."""

    def sequences(self, indices) -> torch.Tensor: ...


def build_source(cfg: DataConfig, split: str) -> SequenceSource:
    url = cfg.shards if split == "train" else cfg.val_shards
    if cfg.source == "dyck":
        return DyckSource(cfg, split)
    if cfg.source == "text_shards":
        if url is None:
            raise UserError("data.source=text_shards evaluates on data.val_shards; tokenize the corpus's val split "
                            "(nca-scale corpus tokenize CORPUS split=val ...) and set data.val_shards=URL, or eval_every=0")
        return TextShardSource(cfg, url, split)
    if cfg.source == "nca_stream" or url is None:
        from nca_scale.nca.stream import NCAStream

        return NCAStream(cfg.nca, split, node_banks=True)  # a node's ranks score each rule bank once between them
    return ShardSource(cfg, url, split)


class ShardSource:
    """Shards written by `nca-scale generate`: the same tokens the stream would generate for each index."""

    def __init__(self, cfg: DataConfig, url: str, split: str):
        from nca_scale.data import ShardReader

        self.reader = ShardReader(url)
        self.epochs = cfg.epochs if split == "train" else 1  # data.epochs: index i reads row i mod the length
        if self.reader.config != cfg.nca or self.reader.split != split:
            raise UserError(
                f"shards at {url} hold the {self.reader.split} split of another NCA config than data.nca; pass the "
                "config they were generated with (their manifest.json records it)"
            )

    def sequences(self, indices) -> torch.Tensor:
        idx = np.asarray(indices)
        if self.epochs > 1:
            idx = self.reader.start + (idx - self.reader.start) % len(self.reader)
        if idx.min() < self.reader.start or idx.max() >= self.reader.stop:
            raise UserError(
                f"the run needs sequences {idx.min()}..{idx.max()}, the shards hold {self.reader.start}.."
                f"{self.reader.stop - 1}; generate more (nca-scale generate ... tokens=) or train fewer steps"
            )
        return torch.from_numpy(self.reader.sequences(idx).astype(np.int64))


class TextShardSource:
    """Packed text from `nca-scale corpus tokenize`: row i of the shard directory is sequence i."""

    def __init__(self, cfg: DataConfig, url: str, split: str):
        from nca_scale.data.text.shards import TextShardReader

        # a node's ranks read and check each shard once between them, then map only their rows
        self.reader = TextShardReader(url, skip_corrupt=cfg.skip_corrupt, node_copies=True)
        self.url = url
        self.epochs = cfg.epochs if split == "train" else 1  # data.epochs: index i reads row i mod the length
        if split == "train" and self.reader.eval_only:
            raise UserError(f"{url} holds evaluation-only text, which is never trained on")
        if self.reader.skipped:
            # a warning: every rank says what it trains without (each reads the shard list itself)
            log.warning(f"{url}: skipped {len(self.reader.skipped)} corrupt shards ({self.reader.skipped_sequences} "
                        f"sequences): {'; '.join(e for _, e in self.reader.skipped)}")

    def close(self) -> None:
        self.reader.close()  # this job's node-local copies

    def prepare(self, indices) -> None:
        idx = np.asarray(indices)
        self.reader.prepare(idx % len(self.reader) if self.epochs > 1 else idx)  # see TextShardReader.prepare

    def sequences(self, indices) -> torch.Tensor:
        idx = np.asarray(indices)
        if self.epochs > 1:
            idx = idx % len(self.reader)
        if idx.min() < 0 or idx.max() >= len(self.reader):
            raise UserError(
                f"the run needs sequences {idx.min()}..{idx.max()}, {self.url} holds {len(self.reader)}; tokenize "
                "more text, lower steps/tokens/eval_batches, or batch_size"
            )
        return torch.from_numpy(self.reader.sequences(idx).astype(np.int64))


class DyckSource:
    """Dyck-k sequences on the fly; the val split reads indices from 2**40 on, disjoint from any training run."""

    VAL_OFFSET = 1 << 40

    def __init__(self, cfg: DataConfig, split: str):
        from nca_scale.data.dyck import DyckStream

        self.stream = DyckStream(cfg.dyck)
        self.offset = 0 if split == "train" else self.VAL_OFFSET

    def sequences(self, indices) -> torch.Tensor:
        return self.stream.sequences(np.asarray(indices, dtype=np.int64) + self.offset)


def target_mask(cfg: DataConfig) -> torch.Tensor:
    """(seq_len,) bool: which targets (tokens[1:]) count in the loss."""
    from nca_scale.nca.tokenizer import loss_mask

    if cfg.source in ("text_shards", "dyck"):
        return torch.ones(cfg.seq_len, dtype=torch.bool)  # every next token is supervised

    return loss_mask(cfg.nca)


@dataclass
class Batch:
    """This rank's share of one global batch: inputs, targets and loss mask per micro-batch."""

    inputs: list[torch.Tensor]  # (micro_batch, seq_len) int64
    targets: list[torch.Tensor]
    masks: list[torch.Tensor]  # (micro_batch, seq_len) bool


class BatchLoader:
    def __init__(self, source: SequenceSource, mask: torch.Tensor, batch_size: int, micro_batch: int, dp_rank: int,
                 dp_size: int):
        self.source, self.mask = source, mask
        self.batch_size, self.micro_batch = batch_size, micro_batch
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def indices(self, step: int) -> np.ndarray:
        """Global sequence indices of this rank's rows of batch `step`."""
        per_rank = self.batch_size // self.dp_size
        start = step * self.batch_size + self.dp_rank * per_rank
        return np.arange(start, start + per_rank)

    def batch(self, step: int) -> Batch:
        prepare = getattr(self.source, "prepare", None)  # NCA stream and text shards: made once per node
        if prepare is not None and self.dp_size > 1:  # the whole global batch, which every rank asks for alike
            prepare(np.arange(step * self.batch_size, (step + 1) * self.batch_size))
        tokens = self.source.sequences(self.indices(step)).long()
        chunks = tokens.split(self.micro_batch)
        mask = self.mask.expand(self.micro_batch, -1)
        return Batch(
            inputs=[c[:, :-1].contiguous() for c in chunks],
            targets=[c[:, 1:].contiguous() for c in chunks],
            masks=[mask[: len(c)] for c in chunks],
        )


class Prefetcher:
    """The batch of the next step, produced in one background thread while this step trains.

    Which tokens a step gets does not change: a batch is still `loader.batch(step)`, a pure function of the
    step, and nothing is carried between steps except the one batch made ahead. When the trainer asks for
    another step than the one made ahead (a skipped step, a rollback) that batch is dropped (cancelled, or waited
    for if it is being made: the source is not thread-safe) and the asked one is made in the foreground. A thread is enough: the NCA step (C, via ctypes), torch ops and zlib release
    the GIL, and the shard readers wait on I/O (docs/performance.md, "Data wait"). An error making a batch is
    raised when that step asks for it, as without prefetching. With `pin`, batches are made in page-locked
    memory, so copies to the GPU can be non-blocking."""

    def __init__(self, loader: BatchLoader, pin: bool = False):
        self.loader, self.pin = loader, pin
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="nca-scale-prefetch")
        self._ahead: tuple[int, Future] | None = None

    def _make(self, step: int) -> Batch:
        batch = self.loader.batch(step)
        if self.pin:
            batch = Batch(*([t.pin_memory() for t in part] for part in (batch.inputs, batch.targets, batch.masks)))
        return batch

    def batch(self, step: int, next_step: int | None) -> Batch:
        """The batch of `step`; starts making the one of `next_step` (None: the run ends after this step)."""
        if self._ahead is not None and self._ahead[0] == step:
            batch = self._ahead[1].result()
        else:
            self.drop()
            batch = self._make(step)
        self._ahead = None if next_step is None else (next_step, self._pool.submit(self._make, next_step))
        return batch

    def drop(self) -> None:
        """Forget the batch made ahead (a skipped step, a rollback): cancelled if not started, else waited for and
        discarded, so that the data source, which is not thread-safe, is never used by two threads at once."""
        if self._ahead is not None:
            future, self._ahead = self._ahead[1], None
            if not future.cancel():
                wait([future])

    def close(self) -> None:
        self._ahead = None
        self._pool.shutdown(wait=True, cancel_futures=True)
