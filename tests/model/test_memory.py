"""model/memory.py: the arithmetic of what one GPU holds, against hand-worked layouts and two published figures.
(The built tensors are checked against it in tests/train/test_simulate.py.)"""

from __future__ import annotations

from functools import partial

import pytest

from nca_scale.model.config import ModelConfig, param_counts
from nca_scale.model.memory import GB, activation_bytes, rank_memory
from nca_scale.model.memory import Layout as AnyLayout
from nca_scale.train import backends
from nca_scale.train.backends.megatron.memory import megatron_buffer, megatron_shard_elements

Layout = partial(AnyLayout, backends.get("megatron").load_memory())  # the backends' arithmetic: train/backends/*/memory.py
DEEPSPEED = backends.get("deepspeed").load_memory()

PAPER = ModelConfig(n_layers=24, d_model=2048, n_heads=32, ffn_hidden=8192, vocab_size=64000)  # configs/model/paper-1.6b
SEVEN_B = ModelConfig(n_layers=26, d_model=4096, n_heads=32, vocab_size=64000)  # configs/model/7b.yaml


def test_buffer_layout_by_hand():
    # two parameters of 100 and 1000 elements, dp 3, distributed optimizer: laid out in reverse (1000 first, at 0),
    # the next start padded to 64 (1024), the bucket's end to lcm(3, 128) = 384 (1124 -> 1152)
    buf = megatron_buffer([(100, False), (1000, False)], dp=3, bucket_size=None, distributed_optimizer=True)
    assert (buf.numel, buf.params, buf.buckets) == (1152, [(0, 1000), (1024, 1124)], [(0, 1152)])
    # each DP rank owns 384 elements of the bucket; rank 2's [768, 1152) holds 232 + 100 real ones (2 parameters)
    assert megatron_shard_elements(buf, 3, 0) == (384, 1)
    assert megatron_shard_elements(buf, 3, 2) == (332, 2)
    # without the distributed optimizer nothing is padded
    plain = megatron_buffer([(100, False), (1000, False)], dp=3, bucket_size=None, distributed_optimizer=False)
    assert (plain.numel, plain.buckets) == (1100, [(0, 1100)])
    # a bucket closes once it holds bucket_size elements
    split = megatron_buffer([(100, False), (1000, False)], dp=3, bucket_size=500, distributed_optimizer=True)
    assert split.buckets == [(0, 1152), (1152, 1152 + 384)]


@pytest.mark.parametrize("dp", [1, 8, 64])
def test_distributed_optimizer_is_the_documented_6_plus_12_over_dp_bytes_per_parameter(dp):
    # megatron-core's distributed optimizer documentation (docs/source/api-guide/dist_optimizer.md, "bf16 param,
    # fp32 grads": 18 bytes per parameter without it, 6 + 12/d with it); padding is < 0.01 % at 1.6B
    mem = rank_memory(PAPER, 1024, Layout(dp=dp, micro_batch=1))
    assert mem.states / mem.params == pytest.approx(6 + 12 / dp, rel=1e-4)
    plain = rank_memory(PAPER, 1024, Layout(dp=dp, micro_batch=1, distributed_optimizer=False))
    assert plain.states / plain.params == pytest.approx(18, rel=1e-4)


def test_zero3_matches_the_zero_papers_figure_1():
    # ZeRO (Rajbhandari et al. 2020), Figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam (K = 12):
    # P_os+g+p = (2 + 2 + K) x 7.5B / 64 = 1.875 GB, printed as 1.9 GB
    mem = rank_memory(SEVEN_B, 1024, AnyLayout(DEEPSPEED, zero=3, dp=64, micro_batch=1, bucket_size=1))
    per_parameter = mem.states / (mem.params / 64)
    assert per_parameter == pytest.approx(16, rel=1e-3)
    assert round(per_parameter * 7.5e9 / 64 / GB, 1) == 1.9


def test_activations_follow_the_micro_batch_the_pipeline_and_recompute():
    one = Layout(micro_batch=1)
    acts, logits = activation_bytes(PAPER, 1024, one)
    assert activation_bytes(PAPER, 1024, Layout(micro_batch=4))[0] == pytest.approx(4 * acts, rel=1e-9)
    # 1F1B: the first of 4 stages holds 4 micro-batches of its 6 layers, the last one 1 (and the logits)
    pp = Layout(pp=4, micro_batch=1, grad_accum=8)
    first, last = activation_bytes(PAPER, 1024, pp, 0), activation_bytes(PAPER, 1024, pp, 3)
    assert first[0] == pytest.approx(acts, rel=1e-9) and first[1] == 0
    assert last[0] == pytest.approx(acts / 4, rel=1e-9) and last[1] == logits
    # full recompute keeps the layer inputs (+ one layer recomputed): about 1/23 of the layers' activations here
    full = activation_bytes(PAPER, 1024, Layout(micro_batch=1, recompute="full"))[0]
    assert full < acts / 10
    # TP with sequence parallelism divides everything per layer by tp
    sp = activation_bytes(PAPER, 1024, Layout(tp=8, micro_batch=1, sequence_parallel=True))[0]
    assert sp == pytest.approx(acts / 8, rel=0.01)


def test_one_gpu_needs_more_than_an_h100_for_the_paper_recipe():
    # the 1.6B recipe on one GPU with the auto micro-batch (16 x 2): weights 3.7 + fp32 grads 7.5 + optimizer 22.5
    # + activations 51.6 + logits 4.4 + transient 2.1 GB, where the estimate by hand was ~85 GB
    mem = rank_memory(PAPER, 1024, Layout(micro_batch=16, grad_accum=2))
    assert mem.params == param_counts(PAPER)["total"]
    assert 85 * GB < mem.total < 95 * GB
    assert rank_memory(PAPER, 1024, Layout(micro_batch=8, grad_accum=4)).total < 76 * GB
