"""Checkpoints and tokenizers for evaluation: any backend's checkpoint (torch, DeepSpeed, megatron, any layout),
a run directory (its latest complete checkpoint) or a Hugging Face Llama directory, loaded as the native Llama."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nca_scale.errors import UserError
from nca_scale.model.config import ModelConfig
from nca_scale.model.llama import Llama
from nca_scale.train import checkpoint, transfer


def resolve(path: str | Path) -> Path:
    """A checkpoint directory (meta.json), a Hugging Face directory (config.json) or a run directory (its latest
    complete checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist; pass a checkpoint, a run directory or a Hugging Face model directory")
    if (p / "config.json").is_file():
        return p
    found = transfer.checkpoint_named(p)  # as init_from=: the run's latest complete checkpoint
    if found:
        return found
    raise UserError(f"{p} is neither a checkpoint (meta.json), a run directory nor a Hugging Face model (config.json)")


def read_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(model config, full fp32 logical tensors, info) of any checkpoint `resolve` accepts. info: kind, path,
    step, tokens, backend, seq_len (training sequence length when known) and tokenizer (when known)."""
    from nca_scale.model import hf

    path = resolve(path)
    if not checkpoint.is_complete(path):
        cfg, tensors, conf = hf.read_hf(path)
        tok = path / "tokenizer.model"
        info = {"kind": "hf", "path": str(path), "seq_len": conf.get("max_position_embeddings"),
                "tokenizer": str(tok) if tok.is_file() else None}
        return cfg, tensors, info
    meta = checkpoint.read_meta(path)
    config = meta["config"]
    model = dict(config["model"])
    if model.get("vocab_size") is None:
        model["vocab_size"] = _nca_vocab(config)
    cfg = ModelConfig(**model)
    tensors = transfer.read_logical(path, cfg)
    info = {"kind": "checkpoint", "path": str(path), "backend": meta["backend"], "layout": meta.get("layout"),
            "step": meta.get("step"), "tokens": meta.get("tokens"),
            "seq_len": meta.get("imported_from", {}).get("max_position_embeddings") or _seq_len(config),
            "tokenizer": find_tokenizer(path, config)}
    return cfg, tensors, info


def _nca_vocab(config: dict) -> int:
    from nca_scale import config as cfgmod
    from nca_scale.nca.config import NCAConfig

    return cfgmod.from_dict(NCAConfig, config["data"]["nca"], source="meta.json").vocab_size


def _text_manifest(config: dict) -> dict | None:
    data = config.get("data", {})
    if data.get("source") != "text_shards" or not data.get("shards"):
        return None
    try:
        from nca_scale.data.text.shards import TextShardReader

        return TextShardReader(data["shards"]).manifest
    except (ImportError, UserError, OSError):
        return None


def _seq_len(config: dict) -> int | None:
    data = config.get("data", {})
    manifest = _text_manifest(config)
    if manifest and manifest.get("seq_len"):
        return int(manifest["seq_len"])
    for section in ("text", "pack", "nca"):
        if isinstance(data.get(section), dict) and data[section].get("seq_len"):
            return int(data[section]["seq_len"])
    return data.get("seq_len")


def find_tokenizer(path: Path, config: dict) -> str | None:
    """A sentencepiece model next to the checkpoint, or one named anywhere in its config (a key containing
    'tokenizer' whose value is an existing file or a directory holding tokenizer.model)."""
    if (path / "tokenizer.model").is_file():
        return str(path / "tokenizer.model")

    def walk(node, key=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, k)
        elif isinstance(node, str) and "tokenizer" in key:
            yield node

    manifest = _text_manifest(config)
    candidates = list(walk(config))
    if manifest and isinstance(manifest.get("tokenizer"), dict):  # the tokenizer the training text was packed with
        url = str(manifest["tokenizer"].get("url") or "")
        candidates.append(url.removeprefix("file://"))
    for value in candidates:
        p = Path(value)
        if p.is_file():
            return str(p)
        if (p / "tokenizer.model").is_file():
            return str(p / "tokenizer.model")
    return None


def build(cfg: ModelConfig, tensors: dict[str, torch.Tensor], max_seq_len: int, device: str = "cpu",
          dtype: torch.dtype = torch.float32) -> Llama:
    model = Llama(cfg, max_seq_len, weights=lambda name: tensors[name])
    return model.to(device=device, dtype=dtype).eval()


def device_of(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class Tokenizer:
    """A sentencepiece model (a .model file, or a directory holding tokenizer.model): encode, decode, EOS."""

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.model"
        if not p.is_file():
            raise UserError(f"tokenizer {path} not found; pass tokenizer=PATH/tokenizer.model")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(p))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{p} is not a sentencepiece model: {e}") from None
        self.path = str(p)
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {"path": self.path, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "bos_id": self.bos_id}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)
