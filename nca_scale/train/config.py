"""Training configuration: one typed tree, loaded from YAML plus `key=value` overrides (nca_scale.config).

The run loop's keys (out, steps, batch_size, backend, resume, init_from, ...) are top-level; everything else is in
sections: model, data, optim, schedule, transfer, parallel, checkpoint, megatron, deepspeed (config_sections.py).
Saved configs carry `config_version`; older ones, and the previous release's flat names (e.g. tp -> parallel.tp),
go through config_versions.py. `validate()` catches every layout error before any process or process group starts;
`with_data_shape()` / `resolved()` read what the data decides (a text shard manifest) once, explicitly.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from nca_scale.data.dyck import DyckConfig
from nca_scale.errors import UserError
from nca_scale.model.config import ModelConfig
from nca_scale.nca.config import NCAConfig
from nca_scale.train import backends, dist
from nca_scale.train.backends import DeepSpeedConfig, MegatronConfig
from nca_scale.train.config_sections import CheckpointConfig, ParallelConfig
from nca_scale.train.config_versions import CONFIG_VERSION, FLAT_ALIASES, upgrade


def from_args(args: list[str], world: int | None = None) -> TrainConfig:
    """`CONFIG.yaml key=value ...` -> a TrainConfig validated for `world` ranks (None: parallel.nproc; a rank
    under torchrun/srun passes the launcher's, dist.launched_world())."""
    from nca_scale import config

    positional, overrides = config.split_overrides(args)
    if len(positional) != 1:
        raise UserError("usage: nca-scale train CONFIG.yaml [key=value ...], e.g. configs/train/cpu-tiny.yaml")
    cfg = config.load(TrainConfig, positional[0], overrides, validate=False).with_world(world)
    cfg.validate()
    return cfg.with_data_shape()


@dataclass(frozen=True)
class DataConfig:
    # Where the sequences come from.
    # nca_stream: sequences generated on the fly from `nca`. nca_shards: read from `nca-scale generate` shards
    # (any URL nca_scale.data reads: path, file://, s3://, memory://) generated with the same `nca` config;
    # evaluation reads `val_shards`, or generates the val split on the fly when it is not set.
    # text_shards: packed text from `nca-scale corpus tokenize` (seq_len and vocabulary come from its manifest;
    # evaluation, i.e. held-out perplexity, reads `val_shards`). dyck: the Dyck-k baseline, generated on the
    # fly from `dyck` (train and val use disjoint index ranges, see train/data.py).
    source: Literal["nca_stream", "nca_shards", "text_shards", "dyck"] = "nca_stream"
    nca: NCAConfig = field(default_factory=NCAConfig)
    dyck: DyckConfig = field(default_factory=DyckConfig)
    shards: str | None = None  # nca_shards/text_shards: the training shards' URL
    val_shards: str | None = None  # nca_shards/text_shards: the evaluation shards' URL
    skip_corrupt: bool = False  # text_shards: drop (and report) corrupt shards instead of stopping
    # nca_shards/text_shards: passes over the training shards a run may make (sequence i reads row i mod their
    # length); a run that needs more is refused before it starts, with the numbers (train/data_check.py)
    epochs: int = 1
    # text_shards: (seq_len, vocab_size) of the shards, from their manifest: read once, by `with_shape` (not a key)
    shape: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def with_shape(self) -> DataConfig:
        """This config with its text shards' manifest read (the one read: `seq_len` and `vocab_size` then answer
        without I/O); a generated source, or shards already read: itself."""
        if self.source != "text_shards" or self.shape is not None:
            return self
        manifest, read = text_manifest(self.shards), replace(self)
        object.__setattr__(read, "shape", (manifest["seq_len"], manifest["vocab_size"]))  # frozen: set once, here
        return read

    def _read_shape(self) -> tuple[int, int]:
        if self.shape is None:
            raise RuntimeError(f"data.source=text_shards: the seq_len and vocabulary of {self.shards} are in its "
                               "manifest; read it first (DataConfig.with_shape, TrainConfig.with_data_shape)")
        return self.shape

    @property
    def seq_len(self) -> int:
        if self.source == "text_shards":
            return self._read_shape()[0]
        return self.dyck.seq_len if self.source == "dyck" else self.nca.seq_len

    @property
    def vocab_size(self) -> int:
        if self.source == "text_shards":
            return self._read_shape()[1]
        return self.dyck.vocab_size if self.source == "dyck" else self.nca.vocab_size

    def validate(self) -> None:
        # a key the chosen source never reads would be silently ignored (e.g. data.shards with nca_stream: the
        # run trains on fresh data), so setting one is an error naming both keys
        reads = {"nca_stream": (), "nca_shards": ("shards", "val_shards"), "dyck": (),
                 "text_shards": ("shards", "val_shards", "skip_corrupt")}[self.source]
        for name in ("shards", "val_shards", "skip_corrupt"):
            if name not in reads and getattr(self, name) != DataConfig.__dataclass_fields__[name].default:
                needs = "text_shards" if name == "skip_corrupt" else "nca_shards or text_shards"
                raise UserError(f"data.{name} is set but data.source={self.source} does not read it; "
                                f"set data.source={needs}, or drop data.{name}")
        if self.epochs < 1:
            raise UserError(f"data.epochs={self.epochs} must be >= 1")
        if self.epochs > 1 and self.source not in ("nca_shards", "text_shards"):
            raise UserError(f"data.epochs={self.epochs}: data.source={self.source} is generated on the fly and never "
                            "runs out; drop data.epochs")
        if self.source == "dyck":
            self.dyck.validate()
            return
        self.nca.validate()
        if self.source == "nca_shards" and not self.shards:
            raise UserError("data.source=nca_shards needs data.shards=PATH")
        if self.source != "text_shards":
            return
        if not self.shards:
            raise UserError("data.source=text_shards needs data.shards=URL (from `nca-scale corpus tokenize`)")
        train = text_manifest(self.shards)
        if train.get("eval_only"):
            raise UserError(f"data.shards={self.shards} holds evaluation-only text ({train['corpus']['name']}/"
                            f"{train['split']}), which is never trained on; tokenize the train split instead")
        if self.val_shards:
            val = text_manifest(self.val_shards)
            if (val["seq_len"], val["tokenizer"]["sha256"]) != (train["seq_len"], train["tokenizer"]["sha256"]):
                raise UserError(f"data.val_shards={self.val_shards} was packed with another tokenizer or seq_len than "
                                f"data.shards; tokenize both with the same tokenizer= and seq_len=")


def text_manifest(url: str | None) -> dict:
    """The manifest of a text shard directory (read once per process and URL)."""
    if not url:
        raise UserError("data.source=text_shards needs data.shards=URL (from `nca-scale corpus tokenize`)")
    if url not in _TEXT_MANIFESTS:
        from nca_scale.data.text.shards import TextShardReader

        _TEXT_MANIFESTS[url] = TextShardReader(url).manifest
    return _TEXT_MANIFESTS[url]


_TEXT_MANIFESTS: dict[str, dict] = {}


@dataclass(frozen=True)
class OptimConfig:
    # adam = no weight decay (the paper's stage 1); sgd = plain SGD without momentum or decay: its update is
    # proportional to the gradient, so the layout tests use it to catch a gradient scaled by a constant
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1.0e-3  # peak learning rate
    beta1: float = 0.9  # Adam first-moment decay
    beta2: float = 0.999  # Adam second-moment decay
    eps: float = 1.0e-8  # Adam epsilon
    weight_decay: float = 0.0  # decoupled weight decay (adamw)
    clip_grad: float = 1.0  # max global grad norm; 0 = no clipping (the paper's stage 1)

    def validate(self) -> None:
        for name in ("lr", "eps"):
            if not getattr(self, name) > 0:
                raise UserError(f"optim.{name}={getattr(self, name)} must be > 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        for name in ("weight_decay", "clip_grad"):
            if not getattr(self, name) >= 0:
                raise UserError(f"optim.{name}={getattr(self, name)} must be >= 0")


@dataclass(frozen=True)
class ScheduleConfig:
    # cosine: linear warmup then cosine to min_lr_ratio * lr at `total` steps.
    # wsd: warmup, constant, then linear decay over the last `decay_fraction` of `total` steps.
    name: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup: int = 0  # linear warmup steps
    total: int | None = None  # schedule length in steps; None = the run's `steps`
    min_lr_ratio: float = 0.0  # final learning rate as a fraction of lr
    decay_fraction: float = 0.2  # wsd: the share of `total` spent decaying


@dataclass(frozen=True)
class TransferConfig:
    """What `init_from=CKPT` does with the source weights. Module names: attn, mlp, norm."""

    reinit_embeddings: bool = True  # new token embedding and LM head (a new vocabulary is then allowed)
    reinit: list[str] = field(default_factory=list)  # modules re-initialised in `layers`
    freeze: list[str] = field(default_factory=list)  # modules frozen in `layers`
    layers: list[int] | None = None  # [first, last) layer range for reinit/freeze; None = all layers


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    out: str = "runs/train"  # the run folder: metrics.jsonl, checkpoints/, config.yaml
    steps: int | None = 100  # stop after this many optimizer steps (0 = only write the initial weights) ...
    tokens: int | None = None  # ... or this many training tokens, whichever comes first
    batch_size: int = 8  # global sequences per step, whatever the world size
    micro_batch: int = 4  # sequences per rank per forward pass (with auto_micro_batch: at most this many)
    # derive the micro-batch from the world size: the largest divisor of batch_size / dp that is <= micro_batch,
    # the rest by accumulation, so the global batch (the recipe) is the same on 1, 8, 16 or 32 GPUs
    auto_micro_batch: bool = False
    seed: int = 0  # seed of the weights and of the data order
    # auto: bf16 on a GPU (the production precision), fp32 on a CPU (no bf16 speed-up to gain, and exact
    # reference runs); resolved on the machine that trains (`resolved`), the start-up line says which and why
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    backend: str = backends.DEFAULT  # torch | megatron | deepspeed (train/backends/: the registry)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    megatron: MegatronConfig = field(default_factory=MegatronConfig)  # read by backend=megatron only
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)  # read by backend=deepspeed only
    # recompute activations in the backward: false, true or full (every layer), selective (megatron's: the core
    # attention only)
    recompute: bool | Literal["full", "selective"] = False

    eval_every: int = 0  # 0 = no evaluation
    eval_batches: int = 2  # global batches of the val split per evaluation
    log_every: int = 1  # steps between metrics lines
    dist_timeout_s: float = dist.TIMEOUT_S  # a collective of the training process group fails after this (NCCL's watchdog)
    rank0_timeout_s: float = dist.RANK0_TIMEOUT_S  # bound of the waits for rank 0's checkpoint work (choice, verification, commit)
    # NaN/inf loss or grad norm: stop, or reload the last checkpoint and skip the offending step's batch
    on_nonfinite: Literal["stop", "rollback"] = "stop"
    max_rollbacks: int = 3  # on_nonfinite=rollback: at most this many times per run
    resume: str = "never"  # never | auto (latest complete checkpoint in OUT/checkpoints) | step_N | a checkpoint path
    # resume=never into an OUT that already holds a run (metrics.jsonl or checkpoints): move the old run aside to
    # OUT.old-<time> and start afresh; without it such an OUT is refused (two runs never mix in one folder)
    overwrite: bool = False
    init_from: str | None = None  # transfer weights from a checkpoint (see `transfer`)

    wandb: str | None = None  # offline | online | disabled; None = $WANDB_MODE or offline
    wandb_project: str = "nca_scale"  # wandb project name
    progress: bool = True  # show a progress bar
    prefetch: bool = True  # make the next step's batch in a background thread (the same tokens either way)
    peak_flops: float | None = None  # per rank; None = the pinned table in nca_scale/train/speed.py

    # the version of these keys, written into saved configs (nca_scale.config.to_dict); a mapping of an older
    # version is migrated by `upgrade` (nca_scale.config.from_dict calls it), key=value overrides with the previous
    # release's flat names (tp, zero, checkpoint_every, ...) through KEY_ALIASES, with a deprecation warning
    CONFIG_VERSION: ClassVar[int] = CONFIG_VERSION
    KEY_ALIASES: ClassVar[dict[str, str]] = FLAT_ALIASES
    upgrade = staticmethod(upgrade)

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def world(self) -> int:
        """The world size: parallel.nproc, which the callers set to the launcher's world (`with_world`)."""
        return self.parallel.nproc

    def with_world(self, world: int | None) -> TrainConfig:
        """This config for `world` ranks started by an external launcher (torchrun, srun: WORLD_SIZE); None = as is."""
        return self if world is None else replace(self, parallel=replace(self.parallel, nproc=world))

    @property
    def data_parallel(self) -> int:
        return self.world // (self.parallel.tp * self.parallel.pp)

    @property
    def seq_len(self) -> int:
        return self.data.seq_len

    def with_data_shape(self) -> TrainConfig:
        """This config with the data's shape read (a text shard manifest: DataConfig.with_shape)."""
        return replace(self, data=self.data.with_shape())

    def chosen_micro_batch(self) -> int:
        """The micro_batch this world size runs: micro_batch, or with auto_micro_batch the largest that fits it
        (what `resolved` writes into micro_batch, which the backends read)."""
        share = self.batch_size // max(1, self.data_parallel)
        if not self.auto_micro_batch or share < 1:
            return self.micro_batch
        fits = [d for d in range(1, min(self.micro_batch, share) + 1) if share % d == 0]
        # the interleaved schedule needs the micro-batch count divisible by pp
        fits = [d for d in fits if self.parallel.vpp == 1 or (share // d) % self.parallel.pp == 0] or fits
        return fits[-1]

    @property
    def grad_accum(self) -> int:
        return self.batch_size // (self.chosen_micro_batch() * self.data_parallel)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """The step at which the run stops: `steps`, or the token budget rounded up to whole steps."""
        budget = None if self.tokens is None else -(-self.tokens // self.tokens_per_step)
        limits = [s for s in (self.steps, budget) if s is not None]
        return min(limits)

    def resolved(self) -> TrainConfig:
        """The config with the data's shape read (with_data_shape), model.vocab_size filled from the data (NCA,
        Dyck or a text shard manifest) and the micro-batch this world size runs (chosen_micro_batch: what the
        backends read), precision=auto made concrete for this device."""
        data = self.data.with_shape()
        return replace(self, data=data, model=self.model.with_vocab(data.vocab_size),
                       micro_batch=self.chosen_micro_batch(),
                       precision=self.chosen_precision()[0]).on_device()

    def on_device(self, gpu: bool | None = None) -> TrainConfig:
        """The backend's section with its device-dependent keys made concrete for a GPU or not (None: this
        device) by its on_device (megatron's overlaps: null = on with a GPU); other backends' sections keep theirs."""
        name = self.backend
        section = getattr(self, name) if backends.get(name).section else None
        if not hasattr(section, "on_device"):
            return self
        return replace(self, **{name: section.on_device(dist.device().type == "cuda" if gpu is None else gpu)})

    def chosen_precision(self) -> tuple[str, str]:
        """(precision, why): the config's own, or for precision=auto bf16 on a GPU and fp32 elsewhere."""
        if self.precision != "auto":
            return self.precision, f"precision={self.precision} in the config"
        if dist.device().type == "cuda":
            return "bf16", "precision=auto on a GPU"
        return "fp32", "precision=auto without a GPU; set precision=bf16 to train in bf16 here"

    def validate(self) -> None:
        """Every section's own checks, then those across sections (layout against the model, batch against the
        world size parallel.nproc: see `with_world`)."""
        self.model.validate()
        self.data.validate()
        self.optim.validate()
        backend = backends.get(self.backend)  # one line for an unknown name
        self.parallel.validate(backend)
        self.checkpoint.validate(backend)
        for b in backends.sections():  # each refuses its keys that another backend does not read
            getattr(self, b.name).validate(self.backend, self.optim.name)
        if backend.check:
            backend.check(self)
        self._validate_backend_keys()
        self._validate_loop()
        self._validate_layout()
        self._validate_transfer()

    def _validate_backend_keys(self) -> None:
        """A key of another backend's section set to anything but its default would be silently ignored (e.g.
        megatron.distributed_optimizer=false with backend=torch): refused, as the sections' own checks do for
        theirs."""
        for owner in backends.sections():
            if self.backend == owner.name:
                continue
            ours, default = getattr(self, owner.name), owner.section()
            for name in ours.__dataclass_fields__:
                if (value := getattr(ours, name)) != getattr(default, name):
                    value = str(value).lower() if isinstance(value, bool) else value
                    raise UserError(f"{owner.name}.{name}={value} is a {owner.name} setting and backend="
                                    f"{self.backend} does not read it; drop it, or set backend={owner.name}")

    def _validate_loop(self) -> None:
        if self.overwrite and self.resume != "never":
            raise UserError(f"overwrite=true starts afresh but resume={self.resume} continues a run; set only one")
        if self.steps is None and self.tokens is None:
            raise UserError("set steps=N or tokens=N to say when training stops")
        if self.data.source == "text_shards" and self.eval_every and not self.data.val_shards:
            raise UserError(f"eval_every={self.eval_every} evaluates on data.val_shards, which is not set; tokenize the "
                            "corpus's val split (nca-scale corpus tokenize CORPUS split=val ...) and set "
                            "data.val_shards=URL, or set eval_every=0")
        for name in ("batch_size", "micro_batch", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be >= 1")
        if self.checkpoint.every_minutes < 0:
            raise UserError(f"checkpoint.every_minutes={self.checkpoint.every_minutes} must be >= 0 (0: off)")
        for name in ("dist_timeout_s", "rank0_timeout_s"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name}={getattr(self, name)} must be > 0 (seconds)")
        if self.recompute == "selective" and not backends.get(self.backend).selective_recompute:
            raise UserError(f"recompute=selective is megatron's (it recomputes the core attention); backend="
                            f"{self.backend} recomputes whole layers: set recompute=full")
        if self.init_from is not None and not os.path.exists(self.init_from):
            raise UserError(f"init_from={self.init_from} does not exist; give a checkpoint, a run folder or "
                            "RUN/checkpoints/latest")
        if self.resume not in ("never", "auto") and not os.path.isdir(self.resume) and \
                not re.fullmatch(r"step_\d+", self.resume):
            raise UserError(f"resume={self.resume}: use never, auto, step_N (OUT/checkpoints/step_N) or an existing "
                            "checkpoint directory")

    def _validate_layout(self) -> None:
        """The parallel layout against the world size, the model's shapes and the batch."""
        world, tp, pp, vpp, m = self.world, self.parallel.tp, self.parallel.pp, self.parallel.vpp, self.model
        if world % (tp * pp):
            raise UserError(f"tp={tp} x pp={pp} = {tp * pp} does not divide the world size {world} (parallel.nproc)")
        if self.parallel.dp is not None and self.parallel.dp * tp * pp != world:
            raise UserError(f"dp={self.parallel.dp} x tp={tp} x pp={pp} = {self.parallel.dp * tp * pp} != world size "
                            f"{world}; set parallel.nproc")
        if m.n_heads % tp or m.kv_heads % tp:
            raise UserError(f"model.n_heads={m.n_heads} (kv heads {m.kv_heads}) is not divisible by tp={tp}")
        if m.n_layers % (pp * vpp):
            raise UserError(f"model.n_layers={m.n_layers} is not divisible by pp={pp} x vpp={vpp}")
        vocab = m.vocab_size or self.data.with_shape().vocab_size
        if vocab % tp:
            raise UserError(f"vocabulary {vocab} is not divisible by tp={tp}; set model.vocab_size to a padded multiple")
        if m.ffn % tp:
            raise UserError(f"SwiGLU width {m.ffn} is not divisible by tp={tp}")
        dp = self.data_parallel
        if self.auto_micro_batch and self.batch_size % dp:
            raise UserError(f"batch_size={self.batch_size} (the recipe's global batch) cannot be split evenly over "
                            f"dp={dp} data-parallel ranks; use a batch_size that is a multiple of {dp}, or raise "
                            f"tp/pp so that dp divides {self.batch_size}")
        if self.batch_size % (self.chosen_micro_batch() * dp):
            raise UserError(f"batch_size={self.batch_size} is not a multiple of micro_batch={self.micro_batch} x dp={dp}")
        if vpp > 1 and self.grad_accum % pp:
            raise UserError(f"the interleaved schedule needs micro-batches per step ({self.grad_accum}) divisible by pp={pp}")

    def _validate_transfer(self) -> None:
        t, n_layers = self.transfer, self.model.n_layers
        for name in (*t.reinit, *t.freeze):
            if name not in ("attn", "mlp", "norm"):
                raise UserError(f"transfer module {name!r} unknown; use attn, mlp or norm")
        if t.layers is not None and not (len(t.layers) == 2 and 0 <= t.layers[0] < t.layers[1] <= n_layers):
            raise UserError(f"transfer.layers={t.layers} must be [first, last) within 0..{n_layers}")
