"""Llama-style decoder configuration, exact parameter counts and FLOPs per token.

One config drives both model implementations (the native `nca_scale.model.llama.Llama` for the torch and
DeepSpeed backends, megatron-core's GPTModel for the megatron backend), so counts printed at start hold for
either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nca_scale.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 2  # transformer blocks
    d_model: int = 64  # hidden width
    n_heads: int = 4  # attention heads (head width = d_model / n_heads)
    n_kv_heads: int | None = None  # None = multi-head attention; fewer = grouped-query attention
    ffn_hidden: int | None = None  # SwiGLU width; None = 4 * d_model (the paper's choice, not 8/3 * d)
    vocab_size: int | None = None  # None = the data's vocabulary
    rope_theta: float = 1.0e4  # RoPE base frequency
    norm_eps: float = 1.0e-6  # RMSNorm epsilon
    attn_dropout: float = 0.0  # the paper trains with 0.1
    tie_embeddings: bool = False  # the paper's models are untied
    init_std: float = 0.02  # every linear and embedding ~ N(0, init_std), no depth scaling (HF Llama init)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn(self) -> int:
        return self.ffn_hidden or 4 * self.d_model

    def with_vocab(self, vocab_size: int) -> ModelConfig:
        return replace(self, vocab_size=self.vocab_size or vocab_size)

    def validate(self) -> None:
        for name in ("n_layers", "d_model", "n_heads"):
            if getattr(self, name) < 1:
                raise UserError(f"model.{name}={getattr(self, name)} must be >= 1")
        if self.d_model % self.n_heads:
            raise UserError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise UserError(f"head_dim={self.head_dim} (d_model / n_heads) must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise UserError(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.kv_heads}")
        if not 0.0 <= self.attn_dropout < 1.0:
            raise UserError(f"model.attn_dropout={self.attn_dropout} must be in [0, 1)")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise UserError(f"model.vocab_size={self.vocab_size} must be >= 2")


def layer_params(cfg: ModelConfig) -> int:
    """One decoder layer: q, k, v, o projections (no biases), SwiGLU gate/up/down, two RMSNorm weights."""
    d, hd = cfg.d_model, cfg.head_dim
    attn = d * cfg.n_heads * hd + 2 * d * cfg.kv_heads * hd + cfg.n_heads * hd * d
    return attn + 3 * d * cfg.ffn + 2 * d


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Exact counts: `non_embedding` = layers + final norm (the paper's "1.6B"); `total` adds the token
    embedding and, when untied, the LM head."""
    if cfg.vocab_size is None:
        raise ValueError("param_counts needs cfg.vocab_size; call cfg.with_vocab(data_vocab) first")
    body = cfg.n_layers * layer_params(cfg) + cfg.d_model
    embed = cfg.vocab_size * cfg.d_model
    head = 0 if cfg.tie_embeddings else embed
    return {"total": body + embed + head, "non_embedding": body, "embedding": embed, "head": head}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Training FLOPs per token (forward + backward = 3 x forward), PaLM appendix B convention:
    6 x (matmul weights, head included, embedding lookup excluded) + 12 x layers x attention width x seq_len
    for QK^T and AV. Causal masking is not subtracted (as in PaLM, torchtitan and Megatron's reports)."""
    if cfg.vocab_size is None:
        raise ValueError("flops_per_token needs cfg.vocab_size")
    matmul = cfg.n_layers * (layer_params(cfg) - 2 * cfg.d_model) + cfg.vocab_size * cfg.d_model
    attention = 2 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len  # per token, forward, QK^T + AV
    forward = 2 * matmul + 2 * attention
    return {"forward": forward, "train": 3 * forward, "attention_train": 6 * attention}


def describe(cfg: ModelConfig, seq_len: int) -> str:
    p, f = param_counts(cfg), flops_per_token(cfg, seq_len)
    return (
        f"model: {cfg.n_layers} layers, d {cfg.d_model}, {cfg.n_heads} heads ({cfg.kv_heads} kv), SwiGLU {cfg.ffn}, "
        f"vocab {cfg.vocab_size}, {'tied' if cfg.tie_embeddings else 'untied'} | params total {p['total']:,} "
        f"non-embedding {p['non_embedding']:,} | train FLOPs/token {f['train']:,} "
        f"(attention {f['attention_train']:,} at seq {seq_len})"
    )
