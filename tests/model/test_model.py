"""Model config: exact parameter counts, FLOPs, presets, the native model and the megatron layout maps."""

import math
from pathlib import Path

import pytest
import torch

from nca_scale import config
from nca_scale.model.config import ModelConfig, flops_per_token, param_counts
from nca_scale.model.layout import fuse_qkv, init_tensor, logical_shapes, megatron_shard, split_qkv
from nca_scale.model.llama import Llama

PRESETS = Path(__file__).parents[2] / "configs" / "model"


def test_paper_model_counts_match_the_release():
    cfg = config.load(ModelConfig, PRESETS / "paper-1.6b.yaml").with_vocab(64000)
    counts = param_counts(cfg)
    assert counts["non_embedding"] == 1_610_713_088  # paper.md §3.1: layers + final norm
    assert counts["total"] == 1_872_921_088 - 64_000  # the release's NCA-stage total minus its head bias
    assert cfg.attn_dropout == 0.1 and not cfg.tie_embeddings


@pytest.mark.parametrize(
    "name, nominal",
    [("cpu-1m", 1e6), ("cpu-5m", 5e6), ("25m", 25e6), ("85m", 85e6), ("150m", 150e6), ("400m", 400e6),
     ("1b", 1e9), ("3b", 3e9), ("7b", 7e9)],
)
def test_presets_are_near_their_names(name, nominal):
    cfg = config.load(ModelConfig, PRESETS / f"{name}.yaml").with_vocab(10002)
    assert abs(param_counts(cfg)["non_embedding"] / nominal - 1) < 0.1


@pytest.mark.parametrize("tied, kv", [(False, None), (True, None), (False, 2)])
def test_native_model_has_exactly_the_counted_parameters(tied, kv):
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=kv, tie_embeddings=tied, vocab_size=100)
    model = Llama(cfg, 16)
    assert sum(p.numel() for p in model.parameters()) == param_counts(cfg)["total"]
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == logical_shapes(cfg)


def test_flops_per_token_by_hand():
    cfg = ModelConfig(n_layers=2, d_model=64, n_heads=4, vocab_size=100)
    matmul = 2 * (4 * 64 * 64 + 3 * 64 * 256) + 100 * 64
    attention = 2 * 2 * 64 * 128
    assert flops_per_token(cfg, 128)["train"] == 3 * (2 * matmul + 2 * attention)


def test_init_is_a_function_of_seed_and_name():
    cfg = ModelConfig(vocab_size=100)
    a, b = Llama(cfg, 16, seed=1), Llama(cfg, 16, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(init_tensor(cfg, "layers.0.attn.wq.weight", 1), init_tensor(cfg, "layers.1.attn.wq.weight", 1))
    assert not torch.equal(init_tensor(cfg, "tok_emb.weight", 1), init_tensor(cfg, "tok_emb.weight", 2))
    assert torch.equal(init_tensor(cfg, "norm.weight", 1), torch.ones(64))


@pytest.mark.parametrize("init_std", [0.02, 0.01])
def test_init_statistics_follow_the_documented_recipe(init_std):
    """docs/training.md, paper.md §3 (HF Llama `_init_weights`): every linear and the embedding ~ N(0, init_std)
    with NO depth scaling (the output projections wo and w_down are not scaled by 1/sqrt(2 layers)), RMSNorm
    weights 1, untied head initialised like the rest. Checked on the native model's parameters."""
    cfg = ModelConfig(n_layers=2, d_model=128, n_heads=4, vocab_size=512, init_std=init_std)
    model = Llama(cfg, 16, seed=3)
    kinds: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        kind = name.split(".")[-2] if name.startswith("layers.") else name.split(".")[0]
        kinds.setdefault(kind, []).append(p.detach().flatten().double())
    assert sorted(kinds) == sorted(["tok_emb", "head", "norm", "attn_norm", "mlp_norm", "wq", "wk", "wv", "wo",
                                    "w_gate", "w_up", "w_down"])
    for kind in ("norm", "attn_norm", "mlp_norm"):
        assert all(torch.equal(t, torch.ones(128, dtype=torch.double)) for t in kinds[kind]), kind
    # shares of a normal within 1 and 2 standard deviations (a uniform of the same std: 0.577, 1.0)
    normal = [math.erf(k / math.sqrt(2)) for k in (1, 2)]  # 0.6827, 0.9545
    for kind in ("tok_emb", "head", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
        for t in kinds[kind]:  # >= 16,384 values each: the sample std is within 0.6% (1 sigma) of the truth
            n = len(t)
            assert abs(t.std().item() / init_std - 1) < 0.03 and abs(t.mean().item()) < 5 * init_std / n**0.5, kind
            for k, share in zip((1, 2), normal):
                assert abs((t.abs() < k * init_std).double().mean().item() - share) < 0.02, (kind, k)
    # every tensor is its own draw: no two layers (or the embedding and the head) share values
    for kind, ts in kinds.items():
        if kind not in ("norm", "attn_norm", "mlp_norm"):
            assert all(not torch.equal(a, b) for i, a in enumerate(ts) for b in ts[i + 1:]), kind
    assert not torch.equal(kinds["tok_emb"][0], kinds["head"][0])


def test_megatron_shards_reassemble_the_logical_tensors():
    cfg = ModelConfig(n_layers=1, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=100)
    get = lambda name: init_tensor(cfg, name, 0)  # noqa: E731
    q, k, v = (get(f"layers.0.attn.{w}.weight") for w in ("wq", "wk", "wv"))
    assert all(torch.equal(x, y) for x, y in zip(split_qkv(cfg, fuse_qkv(cfg, q, k, v)), (q, k, v)))
    shard = lambda name, r: megatron_shard(cfg, name, 0, r, 2, get)  # noqa: E731
    qkv = torch.cat([shard("decoder.layers.0.self_attention.linear_qkv.weight", r) for r in (0, 1)])
    assert torch.equal(qkv, fuse_qkv(cfg, q, k, v))
    # each TP rank holds one query group: its 2 q heads, then k, then v
    assert torch.equal(shard("decoder.layers.0.self_attention.linear_qkv.weight", 1)[:32], q[32:])
    fc1 = shard("decoder.layers.0.mlp.linear_fc1.weight", 1)
    assert torch.equal(fc1, torch.cat([get("layers.0.mlp.w_gate.weight")[128:], get("layers.0.mlp.w_up.weight")[128:]]))
    proj = shard("decoder.layers.0.self_attention.linear_proj.weight", 0)
    assert torch.equal(proj, get("layers.0.attn.wo.weight")[:, :32])
    assert torch.equal(shard("decoder.final_layernorm.weight", 1), torch.ones(64))


def test_recompute_gives_the_same_loss_and_gradients():
    from nca_scale.model.llama import masked_loss

    cfg = ModelConfig(vocab_size=100, attn_dropout=0.1)
    tokens = torch.randint(0, 100, (2, 17), generator=torch.Generator().manual_seed(0))
    results = []
    for recompute in (False, True):
        model = Llama(cfg, 16)
        model.recompute = recompute
        torch.manual_seed(0)  # dropout masks must be redrawn identically in the recomputation
        loss = masked_loss(model(tokens[:, :-1]), tokens[:, 1:], torch.ones(2, 16, dtype=torch.bool))
        loss.backward()
        results.append((loss, [p.grad for p in model.parameters()]))
    (a, ga), (b, gb) = results
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))
