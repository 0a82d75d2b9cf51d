"""bf16 data parallelism reduces gradients in fp32 (issue 22): a layout check tight enough to fail on a bf16
gradient reduction.

Against the single-process torch run (train_helpers.BF16) a bf16 layout differs by bf16 rounding of its own
compute (megatron's Float16Module keeps bf16 weights and gradients, torch autocast fp32 ones): 0.08 of an update
in the weights, and a bf16 reduction adds ~0.05 more, which no tolerance separates. Here each backend is compared
with itself on one rank over the same micro-batches instead (dp=2 x 2 accumulation vs dp=1 x 4: every micro-batch
sees the same sequences, only where the partial gradients are summed differs), and an fp32 reduction makes that
exact to float round-off. Measured (cpu-tiny 4 layers, 10 steps, docs/training.md "Layout checks"):

| run vs its one-rank run | weights | exp_avg | grad norm |
|---|---|---|---|
| megatron dp=2 (grad_reduce_in_fp32, the default) | 4.0e-9 | 4.3e-10 | 1.1e-7 |
| torch DDP dp=2 (fp32 gradients) | 3.6e-6 | 6.2e-5 | 0 |
| megatron dp=2, megatron.grad_reduce_in_fp32=false (the planted bf16 reduction) | 0.047 | 0.016 | 1.7e-4 |

DeepSpeed is not in this check: its bf16 ZeRO keeps and accumulates gradient partitions in bf16, so dp=2 and
dp=1 differ by 0.053 of an update whatever the reduction's dtype (communication_data_type fp32 and bf16 gave
identical weights at 2 ranks: one addition rounds the same either way)."""

import pytest
from train_helpers import assert_same_training, train

BF16_RUN = ("steps=10", "precision=bf16")
# 25x above the torch figure (the larger of the two correct ones), 13-470x below the planted bf16 reduction's
SAME_MICRO_BATCHES = {"loss": 1e-6, "grad_norm": 1e-6, "weights": 1e-4, "moments": 1e-3}
MEGATRON = ("backend=megatron",)


@pytest.fixture(scope="module")
def megatron_one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("megatron-dp1-bf16") / "run"
    train(out, *BF16_RUN, *MEGATRON, "parallel.nproc=1")
    return out


@pytest.mark.slow
def test_megatron_bf16_data_parallel_equals_one_rank_over_the_same_micro_batches(megatron_one_rank, tmp_path):
    train(tmp_path / "run", *BF16_RUN, *MEGATRON, "parallel.nproc=2")
    assert_same_training(tmp_path / "run", megatron_one_rank, SAME_MICRO_BATCHES)


@pytest.mark.slow
def test_a_bf16_gradient_reduction_fails_that_check(megatron_one_rank, tmp_path):
    """The planted reduction of the issue: gradients summed over DP in bf16 (megatron's own switch)."""
    train(tmp_path / "run", *BF16_RUN, *MEGATRON, "parallel.nproc=2", "megatron.grad_reduce_in_fp32=false")
    with pytest.raises(AssertionError):  # at the first step's gradient norm already (1.7e-4 apart)
        assert_same_training(tmp_path / "run", megatron_one_rank, SAME_MICRO_BATCHES)


@pytest.mark.slow
def test_torch_bf16_data_parallel_equals_one_rank_over_the_same_micro_batches(reference_bf16, tmp_path):
    train(tmp_path / "run", *BF16_RUN, "parallel.nproc=2")
    assert_same_training(tmp_path / "run", reference_bf16, SAME_MICRO_BATCHES)
