"""The transformer-block spec of the megatron backend: which attention kernel, norm and linear layers it is built
from.

- CUDA and TransformerEngine: megatron-core's TE spec (norm fused into the next linear, TE's flash / cuDNN
  attention, sequence-parallel norms).
- otherwise (CPU, or GPUs without TE): megatron-core's local spec (its own TP linears) with two modules
  replaced. Core attention is torch's scaled_dot_product_attention: on GPUs its flash or memory-efficient
  kernels never materialise the s x s scores the local DotProductAttention builds (about 3.5 GB per layer for
  the 1.6B model at micro-batch 16 x 1024); GQA through enable_gqa instead of repeating the keys and values.
  The norm is torch's RMSNorm with its weight tagged `sequence_parallel`, so finalize_model_grads all-reduces
  its gradient over TP as it does for TE's norms; the local WrappedTorchNorm refuses sequence parallelism.
  Both are checked against the local spec's modules in tests/train/test_megatron_spec.py.

kernel_settings turns the fusion and recompute keys into TransformerConfig arguments for this machine
(docs/training.md, "Overlap and fusion").
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.gpt import gpt_layer_specs as specs
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

from nca_scale.errors import UserError
from nca_scale.train import dist as tdist

log = logging.getLogger(__name__)


def _te_rope() -> bool:
    from megatron.core.models.common.embeddings import rope_utils

    return rope_utils.fused_apply_rotary_pos_emb is not None  # TransformerEngine's, imported by megatron-core


def compiles(gpu: bool) -> bool:
    """Whether torch.compile can build kernels here, which megatron-core's fused SwiGLU and cross-entropy are
    (megatron.core.jit.jit_fuser): a C compiler, found as Inductor and Triton look for one ($CC, else gcc, clang,
    cc; Inductor's host code on a CPU, Triton's launcher stubs on a GPU) and, on a GPU, Triton. Without them the
    first step would fail inside the compiler."""
    cc = os.environ.get("CC") or next((c for c in ("gcc", "clang", "cc") if shutil.which(c)), None)
    if cc is None or shutil.which(cc) is None:
        return False
    return not gpu or importlib.util.find_spec("triton") is not None


_COMPILE = "torch.compile (a C compiler, and Triton on a GPU)"
# TrainConfig megatron.KEY -> (megatron TransformerConfig field, what the fused kernel needs, whether this run has it)
_FUSIONS = {
    # Apex's kernel only: TransformerEngine fuses the accumulation in its own linears, but megatron-core 0.16's
    # GPTModel output layer is its local ColumnParallelLinear, which refuses the flag without Apex (a RuntimeError
    # at construction, tensor_parallel/layers.py), as Megatron-LM turns the flag off without Apex
    "grad_accum_fusion": ("gradient_accumulation_fusion", "Apex's fused_weight_gradient_mlp_cuda and a GPU",
                          lambda gpu, cfg: gpu and importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None),
    "bias_swiglu_fusion": ("bias_activation_fusion", _COMPILE, lambda gpu, cfg: compiles(gpu)),
    "rope_fusion": ("apply_rope_fusion", "TransformerEngine's fused RoPE and a GPU", lambda gpu, cfg: gpu and _te_rope()),
    # megatron-core 0.16's fused backward casts the logits' gradient to bf16 whatever the precision (measured:
    # the step-1 grad norm of an fp32 run moved 1.4e-4 relative with it, 8e-8 with the SwiGLU fusion)
    "cross_entropy_fusion": ("cross_entropy_loss_fusion", f"precision=bf16 (its backward returns bf16 gradients) and "
                             f"{_COMPILE}", lambda gpu, cfg: cfg.precision == "bf16" and compiles(gpu)),
}


def kernel_settings(cfg) -> dict:
    """megatron TransformerConfig arguments for the fusion and recompute keys of the resolved TrainConfig `cfg`
    on this machine. A fusion left null is on with a GPU where its kernel exists (one logged line names a
    missing one) and off on a CPU; one set to true on a machine without its kernel is refused here, before the
    model is built, rather than failing in the first step. Rank 0 logs what was chosen."""
    gpu, settings, notes = torch.cuda.is_available(), {}, []
    for key, (field, needs, present) in _FUSIONS.items():
        value, available = getattr(cfg.megatron, key), present(gpu, cfg)
        if value and not available:
            raise UserError(f"megatron.{key}=true needs {needs}, which this machine lacks; set megatron.{key}=false, "
                            "or leave it unset (on where available)")
        if value is None:
            value = gpu and available
            if gpu and not available:
                notes.append(f"{key} off (needs {needs})")
        settings[field] = value
    if cfg.recompute == "selective":  # megatron-core's default selective set: the core attention
        settings["recompute_granularity"] = "selective"
    elif cfg.recompute:
        settings.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    on = [key for key, (field, _, _) in _FUSIONS.items() if settings[field]]
    log.info("megatron overlap: grad reduce %s, param gather %s; fusions: %s%s; recompute %s",
             _onoff(cfg.megatron.overlap_grad_reduce), _onoff(cfg.megatron.overlap_param_gather), ", ".join(on) or "none",
             "".join(f"; {n}" for n in notes), settings.get("recompute_granularity", "off"))
    return settings


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


@functools.cache
def use_te() -> bool:
    """Whether the TransformerEngine spec is used: a GPU and a TE that imports. A TE built for another CUDA,
    cuDNN or torch fails its import with OSError (a missing .so) or RuntimeError, not ImportError; then the run
    goes on with the local spec, and a warning says why (once: the answer is kept for the process)."""
    if not torch.cuda.is_available():
        return False  # TE has no CPU build; an import that happens to succeed must not pick a CUDA-only spec
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    except Exception as e:  # OSError, RuntimeError, ...: installed but unusable here
        first = (str(e).strip().splitlines() or [""])[0]
        log.warning(f"TransformerEngine is installed but does not import ({type(e).__name__}: {first}); using "
                    "megatron-core's local spec with torch attention (docs/gpu.md, \"Install on a cluster\")")
        return False
    return True


class SDPAttention(MegatronModule):
    """Causal core attention through F.scaled_dot_product_attention, a drop-in for megatron-core's
    DotProductAttention: query [sq, b, heads, d], key/value [sk, b, groups, d] -> [sq, b, heads * d].
    The attention mask megatron passes is the causal one (the layer spec is AttnMaskType.causal), so is_causal
    replaces it; dropout draws from the model-parallel RNG outside sequence parallelism, as
    DotProductAttention's does."""

    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        if attn_mask_type != AttnMaskType.causal or config.context_parallel_size != 1 or config.window_size:
            raise ValueError("SDPAttention supports causal attention without context parallelism or windows")
        if config.softmax_type != "vanilla":
            raise ValueError(f"SDPAttention does not support softmax_type={config.softmax_type}")
        # apply_query_key_layer_scaling divides the scale by the layer number and multiplies it back inside
        # the softmax (an fp16 overflow guard): the plain scale is the same attention
        self.softmax_scale = softmax_scale if softmax_scale is not None else config.kv_channels ** -0.5
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("SDPAttention supports neither attention_bias nor packed sequences")

        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, n, s, d]
        p = self.dropout if self.training else 0.0
        attend = functools.partial(F.scaled_dot_product_attention, q, k, v, dropout_p=p, is_causal=True,
                                   scale=self.softmax_scale, enable_gqa=q.size(1) != k.size(1))
        if p and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = attend()
        else:
            out = attend()
        return out.permute(2, 0, 1, 3).reshape(out.size(2), out.size(0), -1)  # [s, b, heads * d]


class SequenceParallelRMSNorm(torch.nn.RMSNorm):
    """torch RMSNorm built from megatron's norm arguments; its weight is replicated over TP and, under
    sequence parallelism, sees only this rank's part of the sequence, so its gradient is all-reduced over TP
    (finalize_model_grads reads the `sequence_parallel` tag)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **kwargs):
        if config.normalization != "RMSNorm":
            raise ValueError(f"SequenceParallelRMSNorm is an RMSNorm, not {config.normalization}")
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = config.sequence_parallel


def block_spec(cfg, config, vp_stage: int | None):
    """The spec handed to GPTModel for this rank's layers (and final norm) of virtual stage `vp_stage`, for
    TrainConfig `cfg` and megatron TransformerConfig `config`; the first chunk logs the choice."""
    if vp_stage in (None, 0) and os.environ.get("RANK", "0") == "0":
        log.info(describe(config, cfg.micro_batch, cfg.seq_len, cfg.optim.name))
    if use_te():
        return specs.get_gpt_layer_with_transformer_engine_spec()
    layer = specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    layer.submodules.self_attention.submodules.core_attention = SDPAttention
    layer.submodules.input_layernorm = SequenceParallelRMSNorm
    layer.submodules.pre_mlp_layernorm = SequenceParallelRMSNorm
    count = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * count, layer_norm=SequenceParallelRMSNorm)


def sdpa_kernel(config, micro_batch: int, seq_len: int, tp: int) -> str:
    """The kernel torch's SDPA dispatcher picks for this run's attention call (training, with gradients)."""
    from torch.nn.attention import SDPBackend

    dtype, device = (torch.bfloat16 if config.bf16 else torch.float32), tdist.device()
    d = config.kv_channels
    q = torch.empty(micro_batch, config.num_attention_heads // tp, seq_len, d, dtype=dtype, device=device,
                    requires_grad=True)
    kv = torch.empty(micro_batch, max(config.num_query_groups // tp, 1), seq_len, d, dtype=dtype, device=device,
                     requires_grad=True)
    try:  # the dispatcher's own choice function: private, so a torch that changed it gets "unknown"
        choice = torch._fused_sdp_choice(q, kv, kv, None, config.attention_dropout, True, scale=None,
                                         enable_gqa=q.size(1) != kv.size(1))
        return SDPBackend(choice).name.lower()
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return "unknown"


def optimizer_class(name: str) -> str:
    """The optimizer megatron-core's get_megatron_optimizer builds: TE's or Apex's fused one when installed,
    else torch's."""
    import megatron.core.optimizer as mo

    cls = mo.SGD if name == "sgd" else mo.Adam
    return f"{cls.__module__}.{cls.__qualname__}"


def describe(config, micro_batch: int, seq_len: int, optimizer: str) -> str:
    """Which spec, attention kernel, norm and optimizer class the run computes with."""
    tp = config.tensor_model_parallel_size
    if use_te():
        import transformer_engine

        return (f"megatron spec: TransformerEngine {transformer_engine.__version__} (attention: TE "
                f"DotProductAttention, flash or cuDNN per call; NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=1 names it; norm: TE "
                f"RMSNorm fused into the next linear); optimizer {optimizer_class(optimizer)}")
    kernel = sdpa_kernel(config, micro_batch, seq_len, tp)
    return (f"megatron spec: local + torch SDPA (attention kernel: {kernel}; norm: torch RMSNorm, sequence "
            f"parallel {'on' if config.sequence_parallel else 'off'}); optimizer {optimizer_class(optimizer)}")

