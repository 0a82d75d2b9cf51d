"""nca-scale export CKPT out=DIR [tokenizer=PATH.model] [dtype=fp32|bf16|fp16] [max_positions=N]
nca-scale import HF_DIR out=DIR

export: a checkpoint of any backend and parallel layout (torch dcp/ or state.pt, DeepSpeed ZeRO 0-3,
megatron torch_dist at any TP/PP), or a run directory (its latest complete checkpoint), as a Hugging Face
LlamaForCausalLM directory: model.safetensors, config.json, generation_config.json and, with a sentencepiece
model (tokenizer=, or the one the checkpoint records), tokenizer.model + tokenizer.json + tokenizer_config.json.
Load it with transformers.AutoModelForCausalLM.from_pretrained(DIR). Refuses what Llama cannot express
(an LM-head bias, other biases, unknown model options), and an out= that is a file, a run or checkpoint
folder or any non-empty folder; the directory appears whole when every file is written.

import: a LlamaForCausalLM directory (safetensors) as an nca_scale torch checkpoint directory (state.pt with
the model tensors, the format before DCP that every reader still reads, + meta.json, step 0, tokenizer.model
copied when present), usable by `nca-scale eval`, `export` and `train ... init_from=DIR`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from nca_scale import config
from nca_scale.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ExportJob:
    out: str | None = None  # the Hugging Face directory to write: new or empty (required)
    tokenizer: str | None = None  # sentencepiece .model to ship; default: the checkpoint's own
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # dtype of the saved weights
    max_positions: int | None = None  # default: the training sequence length (else 2048)
    allow_vocab_mismatch: bool = False  # ship a tokenizer whose size is not the model's vocabulary


@dataclass(frozen=True)
class ImportJob:
    out: str | None = None  # the checkpoint directory to write (required)


def _parse(cls, args: list[str], usage: str):
    positional, overrides = config.split_overrides(args)
    if len(positional) != 1:
        raise UserError(usage)
    job = config.load(cls, None, overrides)
    if not job.out:
        raise UserError(f"out=DIR is required; {usage}")
    return positional[0], job


def export_main(args: list[str]) -> int:
    from nca_scale.analysis.eval import model_io
    from nca_scale.model import hf

    src, job = _parse(ExportJob, args, "usage: nca-scale export CKPT out=DIR [tokenizer=PATH.model] [dtype=fp32|bf16]")
    hf.check_out(job.out)  # before reading any weights
    cfg, tensors, info = model_io.read_weights(src)
    tokenizer = job.tokenizer or info.get("tokenizer")
    if tokenizer and not job.allow_vocab_mismatch:
        from nca_scale.train.transfer import check_vocabulary

        check_vocabulary(cfg.vocab_size, model_io.Tokenizer(tokenizer).vocab_size, model=f"the model in {info['path']}",
                         text=f"tokenizer {tokenizer}", allow="allow_vocab_mismatch")
    out = hf.export(tensors, cfg, job.out, max_positions=job.max_positions or info.get("seq_len") or 2048,
                    tokenizer=tokenizer, dtype=DTYPES[job.dtype],
                    extra={"source": {k: v for k, v in info.items() if k != "tokenizer"}, "tokenizer": tokenizer})
    print(f"[nca-scale] exported {info['path']} ({info.get('backend', info['kind'])}, step {info.get('step')}) -> {out}"
          f"{'' if tokenizer else ' (no tokenizer: pass tokenizer=PATH.model to ship one)'}")
    return 0


def import_main(args: list[str]) -> int:
    from nca_scale.model import hf
    from nca_scale.train import backends, checkpoint
    from nca_scale.train.checkpoint import commit as checkpoint_commit
    from nca_scale.train.config import TrainConfig

    src, job = _parse(ImportJob, args, "usage: nca-scale import HF_DIR out=DIR")
    cfg, tensors, conf = hf.read_hf(src)
    out = Path(job.out)
    if checkpoint.is_complete(out):
        raise UserError(f"{out} already holds a checkpoint; choose a new out=")
    out.mkdir(parents=True, exist_ok=True)
    train_cfg = TrainConfig(model=cfg, out=str(out), steps=0)  # the default backend's checkpoint
    backends.format_of(train_cfg.backend).write_weights(out, tensors)
    if (Path(src) / "tokenizer.model").is_file():
        shutil.copyfile(Path(src) / "tokenizer.model", out / "tokenizer.model")
    checkpoint_commit.write_meta(out, train_cfg, step=0, tokens=0)
    meta = json.loads((out / checkpoint.META).read_text())
    meta["imported_from"] = {"path": str(Path(src).resolve()), "max_position_embeddings": conf.get("max_position_embeddings"),
                             "model": dataclasses.asdict(cfg)}
    (out / checkpoint.META).write_text(json.dumps(meta, indent=1))
    print(f"[nca-scale] imported {src} -> {out} (torch checkpoint, {cfg.n_layers} layers, d {cfg.d_model}, "
          f"vocab {cfg.vocab_size})")
    return 0


export_main.__doc__ = import_main.__doc__ = __doc__
