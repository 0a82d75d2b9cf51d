"""Held-out perplexity on any corpus or shard set: exp(mean cross-entropy over every supervised target).

Sources (`data=`):
- `nca`: the checkpoint's own NCA validation split (held-out rules), generated on the fly;
- a shard directory/URL: text shards from `nca-scale corpus tokenize` (manifest format nca_scale.text_shards/1)
  or NCA shards from `nca-scale generate` (with the NCA loss mask);
- a `.jsonl` file of documents (`text` field; corpora_extract.py and `nca-scale corpus` output), a `.txt` file
  (one document) or a directory of `.txt`/`.jsonl` files: encoded with the tokenizer, each document followed by
  EOS, concatenated and cut into non-overlapping rows of seq_len + 1 tokens (the tail is dropped), as training
  packs text;
- a `.bin` file of uint16 tokens (nanoGPT's val.bin): rows of seq_len + 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nca_scale.errors import UserError


def text_documents(path: Path) -> Iterator[str]:
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    for f in files:
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)["text"]
        else:
            yield f.read_text(encoding="utf-8")


def pack(docs: Iterator[str], tok, seq_len: int, max_rows: int | None) -> np.ndarray:
    if tok.eos_id is None:
        raise UserError(f"tokenizer {tok.path} has no EOS piece to separate documents")
    row, rows, buf = seq_len + 1, [], []
    for text in docs:
        buf.extend(tok.encode(text))
        buf.append(tok.eos_id)
        while len(buf) >= row:
            rows.append(buf[:row])
            buf = buf[row:]
            if max_rows and len(rows) >= max_rows:
                return np.asarray(rows, dtype=np.int64)
    if not rows:
        raise UserError(f"the corpus has fewer than seq_len + 1 = {row} tokens; pass a smaller seq_len=")
    return np.asarray(rows, dtype=np.int64)


def load_rows(data: str, *, tok, seq_len: int, max_rows: int | None, nca_config=None
              ) -> tuple[np.ndarray, torch.Tensor | None, dict]:
    """(rows (N, L+1) int64, target mask (L,) bool or None = all, description)."""
    if data == "nca":
        if nca_config is None:
            raise UserError("data=nca needs a checkpoint trained on NCA data (its config names the automaton)")
        from nca_scale.nca.stream import NCAStream
        from nca_scale.nca.tokenizer import loss_mask

        n = max_rows or 64
        rows = NCAStream(nca_config, "val").sequences(np.arange(n)).numpy().astype(np.int64)
        return rows, loss_mask(nca_config), {"source": "nca", "split": "val"}
    path = Path(data)
    if path.suffix in (".jsonl", ".txt") or (path.is_dir() and not (path / "manifest.json").exists()):
        if not path.exists():
            raise UserError(f"data={data} does not exist")
        if tok is None:
            raise UserError(f"data={data} is text: pass tokenizer=PATH (a sentencepiece .model)")
        return pack(text_documents(path), tok, seq_len, max_rows), None, {"source": str(path), "kind": "text"}
    if path.suffix == ".bin":
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        n = len(tokens) // (seq_len + 1)
        n = min(n, max_rows) if max_rows else n
        rows = np.asarray(tokens[: n * (seq_len + 1)], dtype=np.int64).reshape(n, seq_len + 1)
        return rows, None, {"source": str(path), "kind": "uint16 tokens"}
    return _shards(data, max_rows)


def _shards(url: str, max_rows: int | None):
    from nca_scale.data.urls import parse_location

    loc = parse_location(url, what="data")
    try:
        manifest = json.loads(loc.read("manifest.json"))
    except FileNotFoundError:
        raise UserError(f"data={url}: no manifest.json; pass a shard directory, .jsonl, .txt, .bin or nca") from None
    if str(manifest.get("format", "")).startswith("nca_scale.text_shards"):
        from nca_scale.data.text.shards import TextShardReader

        reader = TextShardReader(url)
        n = min(len(reader), max_rows) if max_rows else len(reader)
        rows = np.asarray(reader.sequences(np.arange(n)), dtype=np.int64)
        return rows, None, {"source": url, "kind": "text shards", "split": reader.split,
                            "vocab_size": manifest.get("vocab_size")}
    from nca_scale.data import ShardReader
    from nca_scale.nca.tokenizer import loss_mask

    reader = ShardReader(url)
    n = min(len(reader), max_rows) if max_rows else len(reader)
    rows = np.asarray(reader.sequences(np.arange(reader.start, reader.start + n)), dtype=np.int64)
    return rows, loss_mask(reader.config), {"source": url, "kind": "nca shards", "split": reader.split,
                                            "vocab_size": reader.config.vocab_size}


@torch.no_grad()
def perplexity(model, rows: np.ndarray, mask: torch.Tensor | None, batch_size: int, device: str) -> dict:
    vocab = model.cfg.vocab_size
    if rows.size and rows.max() >= vocab:
        raise UserError(f"the data has token {int(rows.max())} but the model's vocabulary is {vocab}: "
                        "wrong tokenizer or data for this checkpoint")
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = torch.from_numpy(rows[i:i + batch_size]).to(device)
        logits = model(batch[:, :-1])
        losses = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        losses = losses.view(batch.shape[0], -1)
        m = torch.ones_like(losses, dtype=torch.bool) if mask is None else mask.to(device).expand_as(losses)
        total += float(losses[m].double().sum())
        count += int(m.sum())
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count, "sequences": int(len(rows))}
