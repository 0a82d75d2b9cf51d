"""Sampling from the native Llama with a KV cache: a batch of prompts, n samples each, temperature, top-p,
stop tokens and stop strings.

Prompts are left-padded to a common length; each row has its own positions (RoPE at position 0 for its first
real token) and a key mask hiding its padding, so a row's logits do not depend on what it is batched with.
The prompt is run once (prefill) and its cache copied to the n samples of that prompt; each later step feeds
one token per row. `forward_cached` is checked against the model's own forward in tests/model/test_hf.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nca_scale.model.llama import Llama, apply_rope, rope_tables


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per prompt
    stop: tuple[str, ...] = ()  # stop strings (need `decode`); the completion is cut before the first one
    stop_ids: tuple[int, ...] = ()  # stop tokens (EOS); not part of the completion
    seed: int = 0
    vocab_limit: int | None = None  # sample only ids below this (the tokenizer's size, when the model's is padded)


class KVCache:
    def __init__(self, model: Llama, batch: int, length: int, device, dtype):
        cfg = model.cfg
        shape = (batch, cfg.kv_heads, length, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.len = 0

    def repeat(self, n: int) -> None:
        """Each row becomes n consecutive rows (prompt i -> samples i*n .. i*n+n-1)."""
        self.k = [t.repeat_interleave(n, 0) for t in self.k]
        self.v = [t.repeat_interleave(n, 0) for t in self.v]


def forward_cached(model: Llama, tokens: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                   cache: KVCache, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of `tokens` (B, T) at `positions` (B, T), appending their keys/values to `cache`.
    `key_mask` (B, cache.len + T) is True for real (non-padding) keys."""
    cfg = model.cfg
    b, t = tokens.shape
    start, stop = cache.len, cache.len + t
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)  # (B, 1, T, hd)
    causal = torch.ones(t, stop, dtype=torch.bool, device=tokens.device).tril(start)
    mask = (causal.unsqueeze(0) & key_mask[:, None, :stop]).unsqueeze(1)  # (B, 1, T, stop)
    x = model.tok_emb(tokens)
    for i, layer in enumerate(model.layers):
        attn, h = layer.attn, layer.attn_norm(x)
        q = attn.wq(h).view(b, t, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = attn.wk(h).view(b, t, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        v = attn.wv(h).view(b, t, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = apply_rope(q, c, s), apply_rope(k, c, s)
        cache.k[i][:, :, start:stop] = k
        cache.v[i][:, :, start:stop] = v
        out = F.scaled_dot_product_attention(q, cache.k[i][:, :, :stop], cache.v[i][:, :, :stop], attn_mask=mask,
                                             enable_gqa=cfg.kv_heads != cfg.n_heads)
        x = x + attn.wo(out.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.mlp(layer.mlp_norm(x))
    cache.len = stop
    return model.head(model.norm(x))


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) tokens: greedy at temperature 0, else nucleus sampling over the smallest set of
    tokens whose probability reaches top_p (the most likely token is always kept)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
        sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def _cut(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


@torch.no_grad()
def generate(model: Llama, prompts: Sequence[Sequence[int]], sc: SamplingConfig,
             decode: Callable[[list[int]], str] | None = None) -> list[list[dict]]:
    """For each prompt, `sc.n` samples: dicts with `tokens` (completion ids, stop token excluded), `text`
    (decoded and cut before the first stop string, when `decode` is given) and `finish` ("stop" or "length")."""
    if sc.stop and decode is None:
        raise ValueError("stop strings need a decode function")
    model.eval()
    device = model.tok_emb.weight.device
    dtype = model.tok_emb.weight.dtype
    p, n = len(prompts), sc.n
    lengths = torch.tensor([len(x) for x in prompts])
    if (lengths == 0).any():
        raise ValueError("empty prompt: give at least one token (e.g. BOS or EOS)")
    width = int(lengths.max())
    total = width + sc.max_new_tokens
    cos, sin = rope_tables(model.cfg.head_dim, total, model.cfg.rope_theta)
    cos, sin = cos.to(device), sin.to(device)
    tokens = torch.zeros(p, width, dtype=torch.long)
    key_mask = torch.zeros(p, total, dtype=torch.bool)
    key_mask[:, width:] = True  # generated tokens
    for i, x in enumerate(prompts):
        tokens[i, width - len(x):] = torch.tensor(list(x), dtype=torch.long)
        key_mask[i, width - len(x):] = True
    pad = (width - lengths).unsqueeze(1)
    positions = (torch.arange(width).unsqueeze(0) - pad).clamp(min=0)
    cache = KVCache(model, p, total, device, dtype)
    logits = forward_cached(model, tokens.to(device), positions.to(device), key_mask.to(device), cache, cos, sin)
    last = logits[:, -1].repeat_interleave(n, 0)
    cache.repeat(n)
    key_mask = key_mask.repeat_interleave(n, 0).to(device)
    pos = lengths.repeat_interleave(n, 0).to(device)
    gen = torch.Generator().manual_seed(sc.seed)
    rows = p * n
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    finish = ["length"] * rows
    stop_ids = set(sc.stop_ids)
    for step in range(sc.max_new_tokens):
        if sc.vocab_limit is not None and sc.vocab_limit < last.shape[-1]:
            last[:, sc.vocab_limit:] = float("-inf")
        nxt = sample_token(last, sc.temperature, sc.top_p, gen)
        for r, tok in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if tok in stop_ids:
                done[r], finish[r] = True, "stop"
                continue
            out[r].append(tok)
            if sc.stop and _cut(decode(out[r]), sc.stop)[1]:
                done[r], finish[r] = True, "stop"
        if all(done) or step == sc.max_new_tokens - 1:
            break
        logits = forward_cached(model, nxt.unsqueeze(1), pos.unsqueeze(1), key_mask, cache, cos, sin)
        last = logits[:, -1]
        pos = pos + 1
    results = []
    for r in range(rows):
        item = {"tokens": out[r], "finish": finish[r]}
        if decode is not None:
            item["text"] = _cut(decode(out[r]), sc.stop)[0]
        results.append(item)
    return [results[i * n:(i + 1) * n] for i in range(p)]
