"""megatron-core backend: GPTModel (spec from spec.py: TransformerEngine's on GPUs that have it, else
the local spec with torch SDPA attention), TP (+ sequence parallel), PP (1F1B, or interleaved with vpp > 1),
DP with megatron's DDP and distributed optimizer, bf16, full activation recompute, and `torch_dist`
distributed checkpoints that load under another TP/PP layout, saved and loaded fully parallel over DP, written
in the background with checkpoint.asynchronous.

On CPU machines cpu_compat.py is activated first; on GPUs nothing is patched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nca_scale.model.layout import megatron_shard, megatron_sources, megatron_tp_dim
from nca_scale.train import checkpoint
from nca_scale.train import dist as tdist
from nca_scale.train.backends.base import Simulation, Weights, Writing
from nca_scale.train.backends.megatron import cpu_compat
from nca_scale.train.config import TrainConfig
from nca_scale.train.data import Batch
from nca_scale.train.speed import StepPhases

tdist.quiet_upstream_warnings()
log = logging.getLogger(__name__)


class MegatronEngine:
    def __init__(self, cfg: TrainConfig, weights: Weights, frozen: set[str]):
        cpu_compat.activate()
        from megatron.core import parallel_state as ps

        self.cfg, self.ps, self.weights, self.frozen = cfg, ps, weights, frozen
        ps.initialize_model_parallel(
            tensor_model_parallel_size=cfg.parallel.tp, pipeline_model_parallel_size=cfg.parallel.pp,
            virtual_pipeline_model_parallel_size=cfg.parallel.vpp if cfg.parallel.vpp > 1 else None,
            distributed_timeout_minutes=max(1, math.ceil(cfg.dist_timeout_s / 60)),  # megatron's groups: whole minutes
        )
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        self._seed(step=-1)  # the RNG tracker must exist before any forward, evaluation included
        self.config = self._transformer_config()
        self.chunks = [self._wrap(self._build_chunk(i), bucketed=i == 0) for i in range(cfg.parallel.vpp)]
        self._schedule_hooks()
        self.optimizer = self._optimizer()
        s = cfg.seq_len
        self.position_ids = torch.arange(s, device=tdist.device()).unsqueeze(0).expand(cfg.micro_batch, s)
        self.causal_mask = torch.ones(s, s, dtype=torch.bool, device=tdist.device()).triu(1).view(1, 1, s, s)
        self._checkpoint_strategies()
        self.phases = StepPhases()

    # ---- build -------------------------------------------------------------------------------------
    def _transformer_config(self):
        from megatron.core.distributed import finalize_model_grads
        from megatron.core.transformer.transformer_config import TransformerConfig

        from nca_scale.train.backends.megatron import spec

        cfg, m = self.cfg, self.cfg.model
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
        config = TransformerConfig(
            num_layers=m.n_layers, hidden_size=m.d_model, num_attention_heads=m.n_heads, num_query_groups=m.kv_heads,
            kv_channels=m.head_dim, ffn_hidden_size=m.ffn, normalization="RMSNorm", layernorm_epsilon=m.norm_eps,
            gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0,
            attention_dropout=m.attn_dropout, init_method_std=m.init_std,
            tensor_model_parallel_size=cfg.parallel.tp, pipeline_model_parallel_size=cfg.parallel.pp,
            virtual_pipeline_model_parallel_size=cfg.parallel.vpp if cfg.parallel.vpp > 1 else None,
            sequence_parallel=cfg.parallel.sequence_parallel, pipeline_dtype=dtype, params_dtype=dtype,
            bf16=cfg.precision == "bf16",
            # gloo mismatches batch_isend_irecv's concurrent sends/receives between one pair of ranks in the
            # interleaved schedule (micro-batch losses drift from 1F1B's); NCCL batches them correctly
            batch_p2p_comm=torch.cuda.is_available(),
            # weights are written from the layout-independent init below; skip megatron's own
            use_cpu_initialization=not torch.cuda.is_available(), perform_initialization=False,
            **spec.kernel_settings(cfg),  # fusions and recompute (refused here if this machine lacks one)
        )
        config.finalize_model_grads_func = finalize_model_grads
        return config

    def _build_chunk(self, vp: int):
        from megatron.core.models.gpt.gpt_model import GPTModel

        from nca_scale.train.backends.megatron import spec

        cfg, ps = self.cfg, self.ps
        vp_stage = vp if cfg.parallel.vpp > 1 else None
        model = GPTModel(
            config=self.config, transformer_layer_spec=spec.block_spec(cfg, self.config, vp_stage),
            vocab_size=cfg.model.vocab_size,
            max_sequence_length=cfg.seq_len, position_embedding_type="rope", rotary_base=int(cfg.model.rope_theta),
            share_embeddings_and_output_weights=cfg.model.tie_embeddings,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage), vp_stage=vp_stage,
        ).to(tdist.device())
        self._write_initial_weights(model)
        return model

    def _write_initial_weights(self, model) -> None:
        """Copy the run's initial weights (logical tensors) into this rank's shards; freeze a parameter when
        every logical tensor it is built from is frozen; tag TP-split parameters as megatron's own init does."""
        from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

        cfg, ps = self.cfg, self.ps
        tp_rank, tp = ps.get_tensor_model_parallel_rank(), cfg.parallel.tp
        tied = cfg.model.tie_embeddings
        with torch.no_grad():
            for name, p in model.named_parameters():
                layer = None
                if match := re.match(r"decoder\.layers\.(\d+)\.", name):
                    layer = model.decoder.layers[int(match.group(1))].layer_number - 1
                if tied and name == "output_layer.weight":  # the last stage's copy of the tied embedding
                    name = "embedding.word_embeddings.weight"
                p.copy_(megatron_shard(cfg.model, name, layer, tp_rank, tp, self.weights))
                p.requires_grad_(not set(megatron_sources(name, layer)) <= self.frozen)
                # megatron-core sets `tensor_model_parallel` only inside its weight init, which
                # perform_initialization=False skips; untagged, every TP shard counts as a replica, and the
                # grad norm (and so clipping) sees TP rank 0's shards only (norm^2 ~ 1/3 of the true one at tp=2)
                dim = megatron_tp_dim(name)
                if dim is not None and not getattr(p, "tensor_model_parallel", False):
                    set_tensor_model_parallel_attributes(p, is_parallel=True, dim=dim, stride=1)

    def _wrap(self, model, bucketed: bool):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.transformer.module import Float16Module

        if self.cfg.precision == "bf16":
            model = Float16Module(self.config, model)
        cfg = self.cfg
        ddp = DistributedDataParallelConfig(
            use_distributed_optimizer=cfg.megatron.distributed_optimizer, grad_reduce_in_fp32=cfg.megatron.grad_reduce_in_fp32,
            overlap_grad_reduce=cfg.megatron.overlap_grad_reduce, overlap_param_gather=cfg.megatron.overlap_param_gather,
            # the interleaved schedule starts each chunk's parameter gather itself (_schedule_hooks); otherwise
            # each bucket's forward pre-hook starts the next bucket's
            align_param_gather=cfg.megatron.overlap_param_gather and cfg.parallel.vpp > 1, bucket_size=cfg.parallel.bucket_size,
        )
        # only the first chunk is bucketed, as in Megatron-LM (later chunks would overlap nothing)
        return DistributedDataParallel(self.config, ddp, model, disable_bucketing=not bucketed)

    def _schedule_hooks(self) -> None:
        """What the pipeline schedules call to overlap communication, set as Megatron-LM's training loop sets
        them. Without no_sync_func, an overlapped gradient reduce would start after every micro-batch's backward
        instead of only the last one's."""
        def per_chunk(name: str):
            hooks = [getattr(chunk, name) for chunk in self.chunks]
            return hooks[0] if len(hooks) == 1 else hooks

        if self.cfg.megatron.overlap_grad_reduce:
            self.config.no_sync_func = per_chunk("no_sync")
            self.config.grad_sync_func = per_chunk("start_grad_sync")
        if self.cfg.megatron.overlap_param_gather and self.cfg.parallel.vpp > 1:
            self.config.param_sync_func = per_chunk("start_param_sync")

    def _optimizer(self):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        o, adamw = self.cfg.optim, self.cfg.optim.name == "adamw"
        config = OptimizerConfig(
            optimizer="sgd" if o.name == "sgd" else "adam", sgd_momentum=0.0,  # sgd: plain, as the torch backend's
            lr=o.lr, weight_decay=o.weight_decay if adamw else 0.0, decoupled_weight_decay=adamw,
            adam_beta1=o.beta1, adam_beta2=o.beta2, adam_eps=o.eps, clip_grad=o.clip_grad,
            bf16=self.cfg.precision == "bf16", params_dtype=self.config.params_dtype,
            use_distributed_optimizer=self.cfg.megatron.distributed_optimizer, overlap_param_gather=self.cfg.megatron.overlap_param_gather,
        )
        # config_overrides={}: decay every tensor, as the torch backend does (megatron's default exempts norms)
        return get_megatron_optimizer(config, self.chunks, config_overrides={})

    # ---- steps -------------------------------------------------------------------------------------
    def _forward_step(self, data_iterator, model):
        x, y, mask = next(data_iterator)
        out = model(x, self.position_ids[: len(x)], self.causal_mask, labels=y)

        def loss_func(per_token: torch.Tensor):
            m = mask.to(per_token.dtype)
            loss = (per_token.float() * m).sum() / m.sum()
            return loss, {"loss": loss.detach().clone()}  # the schedule divides `loss` in place

        return out, loss_func

    def _run(self, batch: Batch, forward_only: bool) -> float:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        dev = tdist.device()
        # pinned by the Prefetcher on a GPU: asynchronous copies, queued before the forwards that read them
        micro = [tuple(t.to(dev, non_blocking=True) for t in mb)
                 for mb in zip(batch.inputs, batch.targets, batch.masks)]
        iterators = [iter(micro) for _ in self.chunks]
        results = get_forward_backward_func()(
            forward_step_func=self._forward_step, data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.chunks, num_microbatches=len(micro), seq_length=self.cfg.seq_len,
            micro_batch_size=self.cfg.micro_batch, forward_only=forward_only,
        )
        # the losses exist on the last pipeline stage: sum over the PP group, then average over DP
        total = sum(r["loss"].item() for r in results) / len(micro) if results else 0.0
        loss = torch.tensor([total], dtype=torch.float64, device=dev)  # on the group's device: NCCL on GPU
        dist.all_reduce(loss, group=self.ps.get_pipeline_model_parallel_group())
        return tdist.mean_over(loss.item(), self.ps.get_data_parallel_group())

    def _seed(self, step: int) -> None:
        """Dropout RNG of `step`; model_parallel_cuda_manual_seed adds the TP-rank offset itself."""
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        pp_rank = self.ps.get_pipeline_model_parallel_rank()
        model_parallel_cuda_manual_seed(tdist.step_seed(self.cfg.seed, step, self.dp_rank, pp_rank) % 2**31)

    def train_step(self, batch: Batch, step: int, lr: float) -> tuple[float, float]:
        self.phases.start()
        self._seed(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for chunk in self.chunks:
            chunk.train()
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss = self._run(batch, forward_only=False)  # its .item() waits for the backward and the grad reduction
        self.phases.mark("fwd_bwd_time")
        _, grad_norm, _ = self.optimizer.step()  # waits for the grad norm (.item()); the update may still run
        self.phases.mark("optimizer_time")
        return loss, float(grad_norm or 0.0)

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        for chunk in self.chunks:
            chunk.eval()
        return self._run(batch, forward_only=True)

    # ---- checkpoints -------------------------------------------------------------------------------
    def _sharded_state_dict(self, sharding: str, loading: bool) -> dict:
        """Model and optimizer state; the distributed optimizer's in the layout `sharding` (megatron-core's
        distrib_optim_sharding_type: dp_reshardable or fully_reshardable, megatron.optimizer_layout)."""
        model = {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(self.chunks)}
        metadata = {"distrib_optim_sharding_type": sharding}
        return {**model, "optimizer": self.optimizer.sharded_state_dict(model, is_loading=loading, metadata=metadata)}

    def _saved_sharding(self, target: str) -> str:
        """The optimizer layout a checkpoint was written in, from its own common state (checkpoints of earlier
        releases: dp_reshardable, the only one they wrote)."""
        from megatron.core import dist_checkpointing

        if not self.cfg.megatron.distributed_optimizer:
            return "dp_reshardable"  # unused: the plain optimizer's state is sharded like the model
        common = dist_checkpointing.load_common_state_dict(target)
        return common.get("optimizer", {}).get("param_state_sharding_type", "dp_reshardable")

    def _checkpoint_strategies(self) -> None:
        """Fully parallel saves and loads, as Megatron-LM's --ckpt-fully-parallel-save/-load: a tensor that DP
        replicates (the model's, and with distributed_optimizer=false the optimizer's) is written by one of its
        replicas each, spread over the DP group, not all by DP rank 0; on load each replica reads a share and
        the DP group exchanges them. checkpoint.asynchronous (None: on with a GPU) writes in a background process."""
        from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
        from megatron.core.dist_checkpointing.strategies.fully_parallel import (
            FullyParallelSaveStrategyWrapper,
        )

        dp_group = self.ps.get_data_parallel_group(with_context_parallel=True)
        # the state dict's structure never changes within a run, so the split over the replicas is computed once
        self.save_strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), dp_group,
                                                              do_cache_distribution=True)
        self.asynchronous = self.cfg.checkpoint.asynchronous
        if self.asynchronous is None:
            self.asynchronous = tdist.device().type == "cuda"
        self.async_queue = AsyncCallsQueue() if self.asynchronous else None
        _results_queue_dying_with_this_rank()
        log.info(f"checkpoints: fully parallel over dp={self.dp_size}, "
                 + ("written in the background (checkpoint.asynchronous)" if self.asynchronous else "written synchronously"))

    def _load_strategy(self, path: Path):
        from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
        from megatron.core.dist_checkpointing.strategies.fully_parallel import (
            FullyParallelLoadStrategyWrapper,
        )

        dp_group = self.ps.get_data_parallel_group(with_context_parallel=True)
        return FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(str(path)), dp_group)

    def save(self, path: Path) -> BackgroundWrite | None:
        from megatron.core import dist_checkpointing

        self._ensure_optimizer_state()  # a step-0 save (init_from + steps=0) precedes any update
        if self.cfg.megatron.overlap_param_gather:  # the others' updated shards reach this rank only in the next forward
            for chunk in self.chunks:
                chunk.start_param_sync(force_sync=True)
        target = path / "dist"
        if dist.get_rank() == 0:
            target.mkdir()  # dist_checkpointing.save wants an existing, empty directory
        dist.barrier()
        sharding = self.cfg.megatron.optimizer_sharding(self.cfg.parallel.tp, self.cfg.parallel.pp)
        request = dist_checkpointing.save(self._sharded_state_dict(sharding, loading=False), str(target),
                                          sharded_strategy=self.save_strategy, async_sharded_save=self.asynchronous)
        if request is None:
            return None
        if request.async_fn is not None:  # this rank has files to write
            name = path.name.removesuffix(checkpoint.STAGING)
            request = request._replace(async_fn=partial(_write_in_background, request.async_fn, name))
        self.async_queue.schedule_async_request(request)
        return BackgroundWrite(self.async_queue)

    def load(self, path: Path, optimizer: bool = True) -> None:
        from megatron.core import dist_checkpointing

        target = str(path / "dist")
        if not optimizer:
            model = {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(self.chunks)}
            loaded = dist_checkpointing.load(model, target, self._load_strategy(path / "dist"))
            for i, chunk in enumerate(self.chunks):
                chunk.module.load_state_dict(loaded[f"model{i}"])
            return
        self._ensure_optimizer_state()
        sharding = self._saved_sharding(target)
        loaded = dist_checkpointing.load(self._sharded_state_dict(sharding, loading=True), target,
                                         self._load_strategy(path / "dist"))
        for i, chunk in enumerate(self.chunks):
            chunk.module.load_state_dict(loaded[f"model{i}"])
        with torch.no_grad():  # DistributedOptimizer copies into views of leaf tensors
            self._load_optimizer(loaded["optimizer"], sharding)
        if self.cfg.megatron.distributed_optimizer:
            # torch Adam: the per-parameter 'step' comes back from the template (0) and shared between
            # parameters; restore the saved step count, one tensor per parameter
            for opt in self._optimizers():
                if keeps_step_per_parameter(opt.optimizer):
                    step = float(loaded["optimizer"]["optimizer"]["param_groups"][0]["step"])
                    for st in opt.optimizer.state.values():
                        st["step"] = torch.tensor(step)

    def _load_optimizer(self, state: dict, sharding: str) -> None:
        """optimizer.load_state_dict, except for torch Adam's fully_reshardable state: megatron-core 0.16 gives
        each parameter's state a 'step' (per parameter, as torch Adam keeps it) and then copies every key of that
        state from the loaded per-parameter tensors, which have no 'step' (KeyError). So the parameter state is
        loaded here after the rest, without the steps (load() restores them)."""
        opts = self._optimizers()
        if sharding != "fully_reshardable" or not keeps_step_per_parameter(opts[0].optimizer):
            self.optimizer.load_state_dict(state)
            return
        states = [state] if len(opts) == 1 else [v for _, v in sorted(state.items())]
        for opt, st in zip(opts, states):
            opt.load_state_dict({k: v for k, v in st.items() if k != "param_state"})  # no param_state: skipped
            for per_param in opt.optimizer.state.values():
                per_param.pop("step", None)
            opt.load_parameter_state_from_fully_reshardable(st["param_state"])

    def _ensure_optimizer_state(self) -> None:
        if self.cfg.megatron.distributed_optimizer:
            for opt in self._optimizers():
                ensure_optimizer_state(opt)

    def _optimizers(self) -> list:
        return getattr(self.optimizer, "chained_optimizers", [self.optimizer])


def keeps_step_per_parameter(inner: torch.optim.Optimizer) -> bool:
    """torch's Adam keeps `step` in each parameter's state, where megatron-core 0.16's DistributedOptimizer
    expects it; TE's and Apex's FusedAdam keep it per group, and their state_dict() raises KeyError on a
    per-parameter 'step' (issue 14.2); SGD has no state."""
    return isinstance(inner, torch.optim.Adam)


def ensure_optimizer_state(opt) -> None:
    """A DistributedOptimizer `opt` without state (no step taken yet) cannot build its sharded state dict:
    create the zero moments Adam's first step would create, and for torch Adam the zero per-parameter 'step'
    (distrib_optimizer.py asserts one). SGD has nothing to create."""
    if opt.init_state_fn is None or opt.optimizer.state:
        return
    opt.init_state_fn(opt.optimizer, opt.config)
    if keeps_step_per_parameter(opt.optimizer):
        for st in opt.optimizer.state.values():
            st.setdefault("step", torch.tensor(0.0))


_manager: list = []  # the results queue's manager process of this rank (_results_queue_dying_with_this_rank)


def _results_queue_dying_with_this_rank() -> None:
    """megatron-core's file writers report to a queue served by a multiprocessing Manager process it spawns at the
    first save. A spawned process asks to die with its parent only where it re-imports worker.py (torchrun); under
    srun or nproc=1 it outlived a rank killed with kill -9. The rank starts that Manager itself, asking it to die
    with the rank and to leave the job's signals (USR2, TERM, INT) to the rank, which saves on them through this
    queue, and hands megatron-core its queue."""
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from nca_scale import procs

    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=mp.get_context("spawn"))  # as megatron-core's ctx.Manager(), but asked to die
        manager.start(initializer=procs.serve_with_parent)
        _manager.append(manager)
        filesystem_async._results_queue = manager.Queue()


def _write_in_background(write, name: str, *args, **kwargs) -> None:
    """megatron's file writer, run in the process it forks per save (on a GPU after the tensors were copied to
    host memory; on a CPU fork's copy-on-write keeps the tensors as they were at the save while training
    changes them). It dies with its rank, and so do the writer processes it forks in turn."""
    from nca_scale import procs

    procs.die_with_parent()
    Writing.write_files(name, write, *args, **kwargs)  # the tests' window: files written, .metadata not yet


class BackgroundWrite(Writing):
    """A megatron save whose files are being written by a forked process on each rank (callbacks.Checkpointer)."""

    def __init__(self, queue):
        self.queue = queue

    def poll(self) -> bool:
        """Whether every rank has written its files (then megatron's finalization ran: .metadata and
        metadata.json); a collective: every rank calls it at the same step."""
        self.queue.maybe_finalize_async_calls(blocking=False)
        return self.queue.get_num_unfinalized_calls() == 0

    def abandon(self, everywhere: bool) -> None:
        """Kill this rank's writer process (and with it the writers it forked), without any collective."""
        for active in self.queue.async_calls:
            active.async_caller.close(abort=True)
        self.queue.async_calls.clear()


class MegatronSimulation(Simulation):
    def prepare(self, cfg: TrainConfig, real: bool) -> TrainConfig:
        cpu_compat.activate()
        return cfg

    def roles(self, cfg: TrainConfig) -> list[int]:
        """TP rank 0, DP rank 0 of the first and of the last pipeline stage (megatron's rank order: tp fastest,
        then dp, then pp)."""
        if cfg.parallel.pp == 1:
            return [0]
        return [0, cfg.parallel.tp * cfg.data_parallel * (cfg.parallel.pp - 1)]

    def count(self, engine: MegatronEngine) -> tuple[str, int, int, tuple[int, int, int, int]]:
        ps = engine.ps
        tp, pp, dp = (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                      ps.get_data_parallel_rank())
        return f"tp {tp} pp {pp} dp {dp}", pp, dp, held_bytes(engine)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()


def held_bytes(engine: MegatronEngine) -> tuple[int, int, int, int]:
    """(parameters, weight, gradient, optimizer bytes) of a built engine: the DDP buffers' parameter (distributed
    optimizer) and gradient storage, the optimizer's fp32 main parameters that are not views of the model's, and
    its state tensors (Adam moments; the per-parameter step scalars are not counted). A step that has not run yet
    gets its zero state first, as a save would (ensure_optimizer_state)."""
    params = weights = grads = 0
    model = set()
    for chunk in engine.chunks:
        for p in chunk.parameters():
            params += p.numel()
            model.add(id(p))
            if not any(b.param_data is not None for b in chunk.buffers):
                weights += p.numel() * p.element_size()
        for b in chunk.buffers:
            grads += b.grad_data.numel() * b.grad_data.element_size()
            if b.param_data is not None:
                weights += b.param_data.numel() * b.param_data.element_size()
    optimizer = 0
    for opt in engine._optimizers():
        if engine.cfg.megatron.distributed_optimizer:
            ensure_optimizer_state(opt)
        inner = opt.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                if id(p) not in model and p._base is None:
                    optimizer += p.numel() * p.element_size()
        for state in inner.state.values():
            optimizer += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.dim())
    if not engine.cfg.megatron.distributed_optimizer and engine.cfg.optim.name != "sgd":
        # torch Adam creates its moments at the first step: two fp32 tensors like each main parameter
        if not any(opt.optimizer.state for opt in engine._optimizers()):
            optimizer += sum(2 * p.numel() * 4 for opt in engine._optimizers()
                             for g in opt.optimizer.param_groups for p in g["params"])
    return params, weights, grads, optimizer


SIMULATION = MegatronSimulation()
