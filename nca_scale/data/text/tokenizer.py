"""SentencePiece tokenizers trained on built corpora (one domain, or several for a shared vocabulary).

Defaults: BPE with byte fallback (every string encodes, and decodes back exactly), identity normalisation,
no whitespace folding (code indentation survives), no dummy prefix, digits split, and "\\n" as one
user-defined piece so documents are encoded whole. Ids: 0 = <unk>, 1 = <eos> (appended after every document
when packing), no BOS or PAD. The model is written as `tokenizer.model` next to `tokenizer.json` (config,
vocab size, ids, the corpora it was trained on, the model's sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from nca_scale.data.urls import parse_location
from nca_scale.errors import UserError

log = logging.getLogger(__name__)

MODEL = "tokenizer.model"
META = "tokenizer.json"
UNK_ID, EOS_ID = 0, 1


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 8000  # pieces in the vocabulary
    model_type: Literal["bpe", "unigram"] = "bpe"  # SentencePiece model type
    byte_fallback: bool = True  # unknown characters become byte pieces (no <unk>)
    character_coverage: float = 0.9995  # rarer characters fall back to bytes
    split_digits: bool = True  # every digit is its own piece
    max_train_bytes: int = 200_000_000  # text sampled for training, split evenly over the corpora
    max_sentence_length: int = 16384  # longer lines are cut into pieces of this many characters for training
    threads: int = 0  # 0 = all cores

    def validate(self) -> None:
        if self.vocab_size < 64:
            raise UserError(f"vocab_size={self.vocab_size} is too small (>= 64; byte fallback alone needs 259)")
        if self.byte_fallback and self.vocab_size < 300:
            raise UserError(f"vocab_size={self.vocab_size}: byte fallback needs >= 300 (256 bytes + specials + pieces)")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise UserError(f"character_coverage={self.character_coverage} must be in [0.9, 1]")
        if self.max_train_bytes < 1:
            raise UserError("max_train_bytes must be >= 1")


def _sample(corpus, budget: int) -> Iterator[str]:
    """Training documents, streamed: a document is used iff its hash falls below budget / corpus bytes, so the
    sample is spread over the whole corpus and does not depend on document order."""
    total = corpus.manifest["splits"]["train"]["bytes"]
    keep = min(1.0, budget / max(total, 1))
    for d in corpus.documents("train"):
        if keep >= 1.0 or int(d["sha256"][:8], 16) < keep * 2**32:
            yield d["text"]


def _sentences(texts: Iterator[str], max_len: int) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            for k in range(0, len(line), max_len):
                piece = line[k : k + max_len]
                if piece.strip():
                    yield piece


def train_tokenizer(corpora: list, cfg: TokenizerConfig, out: str) -> dict:
    """Train on the train splits of `corpora` (data.text.corpus.Corpus objects); write MODEL and META to `out`."""
    import sentencepiece as spm

    cfg.validate()
    loc = parse_location(out, what="out")
    loc.check_writable()
    per_corpus = cfg.max_train_bytes // len(corpora)
    texts = (t for c in corpora for t in _sample(c, per_corpus))
    model = io.BytesIO()
    t0 = time.perf_counter()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts, cfg.max_sentence_length), model_writer=model,
            vocab_size=cfg.vocab_size, model_type=cfg.model_type, byte_fallback=cfg.byte_fallback,
            character_coverage=cfg.character_coverage, split_digits=cfg.split_digits,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_by_whitespace=True, user_defined_symbols=["\n"],
            unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1, pad_id=-1, max_sentence_length=cfg.max_sentence_length * 4,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=cfg.threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise UserError(f"sentencepiece training failed: {str(e).splitlines()[0]} (too little text for "
                        f"vocab_size={cfg.vocab_size}? lower vocab_size or add documents)") from None
    data = model.getvalue()
    meta = {
        "format": "nca_scale.tokenizer/1", "kind": "sentencepiece", "model": MODEL,
        "sha256": hashlib.sha256(data).hexdigest(), "vocab_size": cfg.vocab_size, "unk_id": UNK_ID,
        "eos_id": EOS_ID, "bos_id": None, "pad_id": None, "config": dataclasses.asdict(cfg),
        "corpora": [{"name": c.name, "domain": c.domain, "fingerprint": c.fingerprint, "url": c.loc.url}
                    for c in corpora],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    loc.put_atomic(MODEL, data)
    loc.put_atomic(META, json.dumps(meta, indent=1).encode())
    log.info(f"{loc.url_of(MODEL)}: {cfg.model_type} vocab {cfg.vocab_size} in {meta['seconds']} s")
    return meta


class Tokenizer:
    """A trained tokenizer directory (or a bare .model file): encode documents, decode ids."""

    def __init__(self, url: str):
        import sentencepiece as spm

        if url.endswith(".model"):
            directory, _, name = url.rstrip("/").rpartition("/")
            directory = directory or "."
        else:
            directory, name = url, MODEL
        loc = parse_location(directory, what="tokenizer")
        try:
            data = loc.read(name)
        except FileNotFoundError:
            raise UserError(f"no tokenizer at {loc.url_of(name)}; train one with `nca-scale tokenizer train "
                            f"CORPUS out={directory}`") from None
        try:
            self.meta = json.loads(loc.read(META)) if name == MODEL else {}
        except FileNotFoundError:
            self.meta = {}
        self.url = loc.url_of(name)
        self.sha256 = hashlib.sha256(data).hexdigest()
        if self.meta.get("sha256", self.sha256) != self.sha256:
            raise UserError(f"{self.url} does not match the sha256 in its {META}; retrain the tokenizer")
        self.sp = spm.SentencePieceProcessor(model_proto=data)
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id = self.sp.eos_id()
        if self.eos_id < 0:
            raise UserError(f"{self.url} has no EOS piece; train it with `nca-scale tokenizer train`")

    def encode(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        return self.sp.encode(texts, num_threads=threads)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {"url": self.url, "sha256": self.sha256, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "model_type": self.meta.get("config", {}).get("model_type"),
                "corpora": [c["name"] for c in self.meta.get("corpora", [])]}
