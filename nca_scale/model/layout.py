"""Parameter layouts and a layout-independent initialisation.

Every tensor has a *logical* name and shape, the native model's (`layers.3.attn.wq.weight`, ...). Its initial
value is a pure function of (seed, logical name), so a model built under any backend, TP, PP or DP layout
starts from the same weights, and losses can be compared across layouts.

megatron-core's GPTModel (local spec) fuses and shards them: per layer `linear_qkv` = for each of the kv_heads
query groups [its q heads, k, v] stacked on dim 0; `linear_fc1` = [gate; up]; column-parallel weights are split
on dim 0 and row-parallel ones on dim 1 across TP ranks, and fc1's shard r is [gate_r; up_r].
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

import torch

from nca_scale.model.config import ModelConfig

NORMS = ("attn_norm", "mlp_norm")


def logical_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, hd, v = cfg.d_model, cfg.head_dim, cfg.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (v, d)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (d,),
            p + "attn.wq.weight": (cfg.n_heads * hd, d),
            p + "attn.wk.weight": (cfg.kv_heads * hd, d),
            p + "attn.wv.weight": (cfg.kv_heads * hd, d),
            p + "attn.wo.weight": (d, cfg.n_heads * hd),
            p + "mlp_norm.weight": (d,),
            p + "mlp.w_gate.weight": (cfg.ffn, d),
            p + "mlp.w_up.weight": (cfg.ffn, d),
            p + "mlp.w_down.weight": (d, cfg.ffn),
        }
    shapes["norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["head.weight"] = (v, d)
    return shapes


def init_tensor(cfg: ModelConfig, name: str, seed: int) -> torch.Tensor:
    """Initial value of logical tensor `name`: norms 1, everything else N(0, init_std) from a generator
    keyed by (seed, name)."""
    shape = logical_shapes(cfg)[name]
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    gen = torch.Generator().manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % 2**63)
    return torch.randn(shape, generator=gen) * cfg.init_std


# ---- megatron-core GPTModel (local spec) ------------------------------------------------------------------
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
_MEGATRON_LAYER = {  # megatron suffix -> logical suffix, TP split dim (None = replicated)
    "input_layernorm.weight": ("attn_norm.weight", None),
    "self_attention.linear_qkv.layer_norm_weight": ("attn_norm.weight", None),  # TE spec: norm fused into qkv
    "mlp.linear_fc1.layer_norm_weight": ("mlp_norm.weight", None),  # TE spec: norm fused into fc1
    "self_attention.linear_proj.weight": ("attn.wo.weight", 1),
    "pre_mlp_layernorm.weight": ("mlp_norm.weight", None),
    "mlp.linear_fc2.weight": ("mlp.w_down.weight", 1),
}
_MEGATRON_TOP = {
    "embedding.word_embeddings.weight": ("tok_emb.weight", 0),
    "output_layer.weight": ("head.weight", 0),
    "decoder.final_layernorm.weight": ("norm.weight", None),
}


def fuse_qkv(cfg: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    g, hd = cfg.kv_heads, cfg.head_dim
    return torch.cat([q.view(g, -1, q.shape[-1]), k.view(g, hd, -1), v.view(g, hd, -1)], 1).reshape(-1, q.shape[-1])


def split_qkv(cfg: ModelConfig, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, hd = cfg.kv_heads, cfg.head_dim
    per_group = cfg.n_heads // g * hd
    grouped = qkv.view(g, per_group + 2 * hd, -1)
    q, k, v = grouped.split([per_group, hd, hd], 1)
    return q.reshape(-1, qkv.shape[-1]), k.reshape(-1, qkv.shape[-1]), v.reshape(-1, qkv.shape[-1])


def megatron_sources(name: str, layer: int | None) -> list[str]:
    """Logical tensors that megatron parameter `name` (local name, global `layer`) is built from."""
    m = _LAYER.fullmatch(name)
    if not m:
        return [_MEGATRON_TOP[name][0]]
    prefix, suffix = f"layers.{layer}.", m.group(2)
    if suffix == "self_attention.linear_qkv.weight":
        return [prefix + f"attn.{w}.weight" for w in ("wq", "wk", "wv")]
    if suffix == "mlp.linear_fc1.weight":
        return [prefix + f"mlp.{w}.weight" for w in ("w_gate", "w_up")]
    return [prefix + _MEGATRON_LAYER[suffix][0]]


def megatron_tp_dim(name: str) -> int | None:
    """The dimension megatron parameter `name` (local module name) is split on across TP ranks; None when
    every TP rank holds the whole tensor (norms)."""
    if name.endswith(("linear_qkv.weight", "linear_fc1.weight")):
        return 0  # column-parallel
    m = _LAYER.fullmatch(name)
    return _MEGATRON_LAYER[m.group(2)][1] if m else _MEGATRON_TOP[name][1]


def megatron_shard(
    cfg: ModelConfig, name: str, layer: int | None, tp_rank: int, tp: int, get: Callable[[str], torch.Tensor]
) -> torch.Tensor:
    """The local value of megatron parameter `name` (local module name; `layer` = its global layer index)
    on TP rank `tp_rank` of `tp`, built from logical tensors given by `get(logical_name)`."""
    sources = [get(n) for n in megatron_sources(name, layer)]
    if name.endswith("linear_qkv.weight"):
        return fuse_qkv(cfg, *sources).chunk(tp, 0)[tp_rank]
    if name.endswith("linear_fc1.weight"):
        return torch.cat([t.chunk(tp, 0)[tp_rank] for t in sources], 0)  # [gate_r; up_r]
    dim = megatron_tp_dim(name)
    return sources[0] if dim is None else sources[0].chunk(tp, dim)[tp_rank]
