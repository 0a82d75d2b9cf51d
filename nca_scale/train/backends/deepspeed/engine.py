"""DeepSpeed backend: the native Llama under the DeepSpeed engine, ZeRO stage 0-3, bf16, optional CPU offload.

The optimizer is the client torch Adam/AdamW or plain SGD (resume is bit-exact with them); with offload=true
DeepSpeed needs its own DeepSpeedCPUAdam, built from the same settings (so offload refuses optim.name=sgd).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from nca_scale.errors import UserError
from nca_scale.model.llama import Llama, masked_loss
from nca_scale.train import dist as tdist
from nca_scale.train.backends.base import Simulation, Weights, freeze, torch_optimizer
from nca_scale.train.backends.deepspeed.format import TAG
from nca_scale.train.config import TrainConfig
from nca_scale.train.data import Batch
from nca_scale.train.speed import StepPhases

tdist.quiet_upstream_warnings()


class DeepSpeedEngine:
    def __init__(self, cfg: TrainConfig, weights: Weights, frozen: set[str]):
        on_cpu()
        self.cfg, self.device = cfg, tdist.device()
        local_rank_is_device(self.device)  # before DeepSpeed reads LOCAL_RANK
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        deepspeed.init_distributed(dist_backend=dist.get_backend())  # adopts the process group above
        self.dp_rank, self.dp_size = dist.get_rank(), dist.get_world_size()
        o = cfg.optim
        config = {
            "train_batch_size": cfg.batch_size,
            "train_micro_batch_size_per_gpu": cfg.micro_batch,
            "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": o.clip_grad,
            "zero_optimization": {"stage": cfg.deepspeed.zero, **zero_buckets(cfg)},
            "bf16": {"enabled": cfg.precision == "bf16"},
            "steps_per_print": 2**62,
        }
        model = _model(cfg, weights, config)
        model.recompute = cfg.recompute
        trainable = freeze(model, frozen)
        if cfg.deepspeed.offload:
            config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
            config["optimizer"] = {"type": "AdamW" if o.name == "adamw" else "Adam", "params": {
                "lr": o.lr, "betas": [o.beta1, o.beta2], "eps": o.eps, "weight_decay": o.weight_decay}}
            optimizer = None
        else:
            optimizer = torch_optimizer(o, trainable)
            # ZeRO lists torch SGD as untested; plain SGD (no momentum) is elementwise and stateless, so
            # partitioning its step over DP ranks changes nothing
            config["zero_allow_untested_optimizer"] = o.name == "sgd"
        self.trainable = trainable
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=trainable, config=config)
        self.phases = StepPhases()

    def train_step(self, batch: Batch, step: int, lr: float) -> tuple[float, float]:
        self.phases.start()
        torch.manual_seed(tdist.step_seed(self.cfg.seed, step, self.dp_rank))
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self.engine.train()
        total, norm = 0.0, None
        for x, y, m in zip(batch.inputs, batch.targets, batch.masks):
            # pinned by the Prefetcher on a GPU: asynchronous copies, queued before the forward that reads them
            x, y, m = (t.to(self.device, non_blocking=True) for t in (x, y, m))
            loss = masked_loss(self.engine(x), y, m)
            self.engine.backward(loss)  # scales by 1 / gradient_accumulation_steps; all-reduces at the boundary
            total += loss.item()  # after the backward, so that it waits for it
            if self.engine.is_gradient_accumulation_boundary():
                if self.cfg.deepspeed.zero == 0:
                    # without ZeRO, fp32 DeepSpeed clips but does not report the norm: take it before the step
                    norm = torch.nn.utils.get_total_norm([p.grad for p in self.trainable]).item()
                self.phases.mark("fwd_bwd_time")
            self.engine.step()  # updates only at the accumulation boundary
        norm = self.engine.get_global_grad_norm() if norm is None else norm
        mean = tdist.mean_over(total / len(batch.inputs))  # its .item() waits for the update
        self.phases.mark("optimizer_time")
        return mean, float(norm)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        self.engine.eval()
        losses = [
            masked_loss(self.engine(x.to(self.device)), y.to(self.device), m.to(self.device)).item()
            for x, y, m in zip(batch.inputs, batch.targets, batch.masks)
        ]
        return tdist.mean_over(sum(losses) / len(losses))

    def save(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag=TAG)

    def load(self, path: Path, optimizer: bool = True) -> None:
        self.engine.load_checkpoint(
            str(path), tag=TAG, load_optimizer_states=optimizer, load_lr_scheduler_states=False,
            load_module_only=not optimizer,
        )
        if optimizer and self.cfg.deepspeed.offload:
            _replay_cpu_adam_powers(self.engine.optimizer.optimizer)


def on_cpu() -> None:
    """DeepSpeed probes for an accelerator and warns before falling back to the CPU; name it up front."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed.ops

        # DeepSpeed's CPU accelerator JIT-compiles its shared-memory all-reduce op on a machine's first
        # init_distributed (~60 s of gcc). Only inference_all_reduce uses it; training collectives go through
        # torch.distributed either way, so marking it unavailable changes no number.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


NODE_LOCAL_RANK = "NCA_SCALE_LOCAL_RANK"  # the launcher's LOCAL_RANK where local_rank_is_device changed it


def local_rank_is_device(device: torch.device) -> None:
    """DeepSpeed takes LOCAL_RANK for this rank's CUDA device index wherever it places a tensor (the engine's
    set_device, zero.Init, ZeRO-3's rank checks), reading the variable each time. With one GPU visible per task
    (srun --gpus-per-task=1, --gpu-bind=single:1) the device is cuda:0 on every rank (dist.visible_device) and
    LOCAL_RANK 1-7 would be "invalid device ordinal". So LOCAL_RANK becomes the device index dist.device() chose,
    for the rest of the process; the launcher's value moves to NCA_SCALE_LOCAL_RANK, which files.node_share
    reads first (the node's first rank still makes the node's shared files)."""
    if device.type != "cuda" or os.environ.get("LOCAL_RANK") == str(device.index):
        return
    os.environ.setdefault(NODE_LOCAL_RANK, os.environ.get("LOCAL_RANK", "0"))
    os.environ["LOCAL_RANK"] = str(device.index)


def zero_buckets(cfg: TrainConfig) -> dict:
    """ZeRO's communication settings: overlap_comm and contiguous_gradients as configured, bucket sizes from
    the model's width (bucket_size= overrides them, as Hugging Face's "auto" values): d_model^2 elements per
    reduce and all-gather bucket, 0.9 x that prefetched ahead under ZeRO-3. DeepSpeed's fixed defaults (5e8
    elements per bucket: 1 GB buffers in bf16) fit no particular model."""
    bucket = cfg.parallel.bucket_size or cfg.model.d_model ** 2
    zero = {"overlap_comm": cfg.deepspeed.overlap_comm, "contiguous_gradients": cfg.deepspeed.contiguous_gradients,
            "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if cfg.deepspeed.zero == 3:
        zero["stage3_prefetch_bucket_size"] = int(0.9 * bucket)
    return zero


def _model(cfg: TrainConfig, weights: Weights, config: dict) -> Llama:
    """The native Llama with the run's initial weights. Under ZeRO-3 with zero_init (the default) it is built
    inside deepspeed.zero.Init: each parameter is partitioned over the DP ranks as soon as its module exists, so
    no rank ever holds the whole model (at 7B, 28 GB in fp32 per rank). The constructor's copies then go into
    the empty placeholders ZeRO leaves, and each initial tensor is written afterwards, one at a time: made on
    rank 0 and spread from there (GatheredParameters). The same values as an unpartitioned build."""
    if cfg.deepspeed.zero != 3 or not cfg.deepspeed.zero_init:
        return Llama(cfg.model, cfg.seq_len, weights=weights)
    import deepspeed

    logging.getLogger(__name__).info(f"ZeRO-3: the model is built partitioned over dp={dist.get_world_size()} "
                                     "(deepspeed.zero.Init)")
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = Llama(cfg.model, cfg.seq_len, weights=lambda name: torch.empty(0))
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=0), torch.no_grad():
            if dist.get_rank() == 0:
                p.copy_(weights(name))
    return model


def _replay_cpu_adam_powers(cpu_adam) -> None:
    """Make a resumed DeepSpeedCPUAdam continue bit-exactly. Its C++ side keeps beta1^t and beta2^t as running
    products (one multiplication per step, cpu_adam.h IncrementStep), but a fresh process at step k computes
    them with pow(beta, k), which differs in the last bits. Stepping the same optimizer id through steps 1..k on
    a one-element dummy rebuilds the products exactly as the uninterrupted run formed them."""
    steps = {int(s["step"]) for s in cpu_adam.state.values() if "step" in s}
    if not steps:
        return
    group = cpu_adam.param_groups[0]
    beta1, beta2 = group["betas"]
    dummy = [torch.zeros(1) for _ in range(4)]  # param, grad, exp_avg, exp_avg_sq
    for t in range(1, max(steps) + 1):
        cpu_adam.ds_opt_adam.adam_update(cpu_adam.opt_id, t, group["lr"], beta1, beta2, group["eps"],
                                         group["weight_decay"], group["bias_correction"], *dummy)


class DeepSpeedSimulation(Simulation):
    meta_cpu = True  # DeepSpeed allocates its partitions on its accelerator, the CPU here

    def refuse(self, cfg: TrainConfig) -> None:
        if cfg.deepspeed.zero != 3:
            raise UserError(f"simulate= models DeepSpeed ZeRO-3 (deepspeed.zero={cfg.deepspeed.zero})")

    def prepare(self, cfg: TrainConfig, real: bool) -> TrainConfig:
        on_cpu()
        if real:
            return cfg
        # zero.Init's partitioned build broadcasts each initial tensor from rank 0, which meta tensors cannot be;
        # ZeRO-3 then partitions the whole model at deepspeed.initialize instead, into the same partitions
        return replace(cfg, deepspeed=replace(cfg.deepspeed, zero_init=False))

    def count(self, engine: DeepSpeedEngine) -> tuple[str, int, int, tuple[int, int, int, int]]:
        return f"dp {dist.get_rank()}", 0, dist.get_rank(), held_bytes(engine)

    def teardown(self) -> None:
        """DeepSpeed's handles on the groups just destroyed."""
        import deepspeed.comm.comm as ds_comm
        from deepspeed.utils import groups

        ds_comm.cdb = None
        for name, value in vars(groups).items():
            if name.startswith("_") and name.isupper() and isinstance(value, (dist.ProcessGroup, dict)):
                setattr(groups, name, None if isinstance(value, dist.ProcessGroup) else {})


def held_bytes(engine: DeepSpeedEngine) -> tuple[int, int, int, int]:
    """(parameters, weight, gradient, optimizer bytes) of a ZeRO-3 engine: the bf16 partitions of every parameter,
    the fp32 gradient partition buffer and the reduce bucket, the fp32 flat partitions and Adam's moments (made at
    the first step as zeros like the fp32 partitions: counted as such before it)."""
    ds = engine.engine
    params = weights = 0
    for p in ds.module.parameters():
        params += p.ds_numel
        weights += p.ds_tensor.numel() * p.ds_tensor.element_size()
    opt = ds.optimizer
    grads = opt.grad_partitions_flat_buffer.numel() * opt.grad_partitions_flat_buffer.element_size()
    grads += sum(b.buffer.numel() * b.buffer.element_size() for b in opt.ipg_buckets.values()
                 if getattr(b, "buffer", None) is not None)
    flat = sum(t.numel() * t.element_size() for t in opt.fp32_partitioned_groups_flat)
    state = sum(t.numel() * t.element_size() for s in opt.optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.dim())
    if not state and engine.cfg.optim.name != "sgd":
        state = 2 * flat
    return params, weights, grads, flat + state


SIMULATION = DeepSpeedSimulation()
