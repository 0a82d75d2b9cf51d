"""Initial weights of a run: the layout-independent init, or a transfer from a checkpoint (init_from=).

A transfer reads the source checkpoint of any backend into logical tensors (nca_scale.model.layout names),
then builds each target tensor: token embedding and LM head are new by default (so the vocabulary may change);
modules named in transfer.reinit are new and those in transfer.freeze are not trained, within transfer.layers;
every other tensor is copied from the source. Optimizer state and step are not transferred.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from nca_scale.errors import UserError
from nca_scale.model.config import ModelConfig
from nca_scale.model.layout import init_tensor, logical_shapes
from nca_scale.train import backends, checkpoint
from nca_scale.train.config import TrainConfig

Weights = Callable[[str], torch.Tensor]
EMBEDDINGS = ("tok_emb.weight", "head.weight")
MODULES = {"attn": ("attn.",), "mlp": ("mlp.",), "norm": ("attn_norm.", "mlp_norm.")}


def _module_layer(name: str) -> tuple[str | None, int | None]:
    """('attn' | 'mlp' | 'norm', layer index) of a logical decoder-layer tensor; (None, None) otherwise."""
    match = re.match(r"layers\.(\d+)\.(.+)", name)
    if not match:
        return None, None
    rest = match.group(2)
    module = next(m for m, prefixes in MODULES.items() if rest.startswith(prefixes))
    return module, int(match.group(1))


def _selected(cfg: TrainConfig, name: str, modules: list[str]) -> bool:
    module, layer = _module_layer(name)
    lo, hi = cfg.transfer.layers or (0, cfg.model.n_layers)
    return module in modules and lo <= layer < hi


def checkpoint_named(path: str | Path) -> Path | None:
    """The checkpoint `path` names, as init_from=, export and eval read it: a checkpoint directory as given; for
    a run folder, its checkpoints/ folder or its checkpoints/latest pointer, the run's latest complete checkpoint
    (the one resume=auto follows). None for anything else (e.g. a Hugging Face directory); UserError for a run
    folder without a complete checkpoint."""
    from nca_scale.train.checkpoint.select import following_latest

    p = Path(path)
    if p.name == checkpoint.LATEST and p.is_file():
        p = p.parent
    if p.name == checkpoint.root(p.parent).name and checkpoint.root(p.parent) == p and not checkpoint.is_complete(p):
        p = p.parent  # RUN/checkpoints
    if checkpoint.is_complete(p):
        return p
    found = following_latest(p) if p.is_dir() else []
    if found:
        return found[-1]
    if checkpoint.root(p).is_dir() or p.name.startswith("step_"):
        raise UserError(f"{path} has no complete checkpoint (meta.json missing: interrupted while saving?)")
    return None


def source(cfg: TrainConfig) -> Path:
    """The checkpoint init_from= names (a checkpoint, a run folder, RUN/checkpoints/latest)."""
    found = checkpoint_named(cfg.init_from)
    if found is None:
        raise UserError(f"init_from={cfg.init_from} is neither a checkpoint (meta.json) nor a run folder with one; "
                        "give a checkpoint, a run folder or RUN/checkpoints/latest")
    return found


def check_vocabulary(model_vocab: int, text_vocab: int, *, model: str, text: str, allow: str) -> None:
    """Where a model meets text (export, eval, transfer): UserError naming both sizes unless the model's embedding
    rows are this vocabulary's, exactly or padded up to the next multiple of 128 (a TP-divisible vocabulary)."""
    if text_vocab <= model_vocab <= max(-(-text_vocab // 128) * 128, text_vocab):
        return
    raise UserError(f"{model} has a vocabulary of {model_vocab:,} but {text} has {text_vocab:,} pieces: not this "
                    f"model's tokenizer (a model of the NCA stage reads text only after training on it: init_from=); "
                    f"set {allow}=true to go on anyway")


def check(cfg: TrainConfig, source: Path) -> ModelConfig:
    """Refuse a transfer that cannot work, before any process starts; returns the source model config."""
    meta = checkpoint.read_meta(source)
    src = ModelConfig(**meta["config"]["model"])
    dst = cfg.resolved().model
    if not cfg.transfer.reinit_embeddings and src.vocab_size != dst.vocab_size:
        raise UserError(
            f"init_from={source} has vocabulary {src.vocab_size}, this run {dst.vocab_size}; keep "
            "transfer.reinit_embeddings=true (the default) to start new embeddings"
        )
    src_shapes, dst_shapes = logical_shapes(src), logical_shapes(dst)
    for name, shape in dst_shapes.items():
        copied = not (name in EMBEDDINGS and cfg.transfer.reinit_embeddings)
        if copied and src_shapes.get(name) != shape:
            raise UserError(f"init_from={source}: tensor {name} is {src_shapes.get(name)} there, {shape} here")
    return src


def fresh_weights(cfg: TrainConfig) -> Weights:
    return lambda name: init_tensor(cfg.model, name, cfg.seed)


def initial_weights(cfg: TrainConfig) -> Weights:
    """logical name -> initial tensor: the fresh init, or the transfer from cfg.init_from."""
    fresh = fresh_weights(cfg)
    if cfg.init_from is None:
        return fresh
    path = source(cfg)
    source_weights = logical_reader(path, check(cfg, path))
    t = cfg.transfer

    def weights(name: str) -> torch.Tensor:
        if (name in EMBEDDINGS and t.reinit_embeddings) or _selected(cfg, name, t.reinit):
            return fresh(name)
        return source_weights(name)

    return weights


def frozen_names(cfg: TrainConfig) -> set[str]:
    """Logical tensors that transfer.freeze keeps fixed (only with init_from)."""
    if cfg.init_from is None:
        return set()
    return {n for n in logical_shapes(cfg.model) if _selected(cfg, n, cfg.transfer.freeze)}


def read_logical(path: Path, model: ModelConfig) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a checkpoint under logical names, whichever backend wrote it (its Format's reader); no
    optimizer state is read where the format allows."""
    meta = checkpoint.read_meta(path)
    with checkpoint.weights_only_loads(meta["backend"]):
        return backends.format_of(meta["backend"]).read_weights(path, meta, model)


def logical_reader(path: Path, model: ModelConfig) -> Weights:
    """logical name -> that tensor of a checkpoint, read when asked for where its format can (a torch DCP
    checkpoint: tensor by tensor), else read whole first (read_logical)."""
    meta = checkpoint.read_meta(path)
    return backends.format_of(meta["backend"]).weight_reader(path, meta, model)


def dcp_keys(path: Path) -> list[str]:
    """The flattened keys of a torch.distributed.checkpoint directory (model.*, optimizer.*, ...)."""
    import torch.distributed.checkpoint as dcp

    return list(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def read_dcp(path: Path, prefix: str, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors `keys` (default: all under `prefix`) of a DCP directory, full size, without a process group,
    under their names less `prefix`. DCP reads each requested item's bytes only, so the others (an optimizer's
    moments) are never read."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path))
    meta = reader.read_metadata().state_dict_metadata
    keys = [k for k in meta if k.startswith(prefix)] if keys is None else keys
    wanted = {k: torch.empty(meta[k].size, dtype=meta[k].properties.dtype)
              for k in keys if isinstance(meta[k], TensorStorageMetadata)}
    with warnings.catch_warnings():  # DCP warns that it assumes one process, even when told so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(wanted, storage_reader=reader, no_dist=True)
    return {k[len(prefix):]: v for k, v in wanted.items()}
