"""The megatron backend on CPU/gloo with 2 (or 4) processes against the single-process torch run: every layout
logs the same grad norm at every step and ends with the same weights and Adam moments, also with clipping
active on text and in bf16; plain SGD catches a gradient scaled by a constant; resume is bit-exact; a TP=2
checkpoint continues under TP=1 and PP=2, a DP=2 distributed-optimizer one under DP=1.

Tolerances (train_helpers.assert_same_training; measured figures in docs/training.md, "Layout checks"): fp32
grad norm 1e-5 relative at every step (issue 13), loss 1e-4, final weights 2e-4 of what training moved them,
moments 1e-4; bf16 the shared BF16 ones."""

from types import SimpleNamespace

import pytest
import torch
from train_helpers import (
    BF16,
    MOMENTS,
    SGD,
    assert_close,
    assert_phase_timers,
    assert_same_training,
    final_checkpoint,
    grad_norms,
    initial_weights,
    losses,
    run_state,
    train,
    update_error,
)

MEGATRON = ("backend=megatron", "parallel.nproc=2")
FP32 = {"loss": 1e-4, "grad_norm": 1e-5, "weights": 2e-4, "moments": 1e-4}
GPU_OVERLAP = ("megatron.overlap_grad_reduce=true", "megatron.overlap_param_gather=true")  # the GPU defaults, which gloo runs too


def assert_continues(run, uninterrupted, start: int, tol=FP32) -> None:
    """`run`, resumed from `uninterrupted`'s step-`start` checkpoint, logs its later steps and ends with its
    weights and optimizer state."""
    assert_close(losses(run), losses(uninterrupted)[start:], tol["loss"])  # run's metrics hold only its steps
    assert_close(grad_norms(run), grad_norms(uninterrupted)[start:], tol["grad_norm"])
    (w, m), (w0, m0) = run_state(final_checkpoint(run)), run_state(final_checkpoint(uninterrupted))
    assert update_error(w, w0, initial_weights(final_checkpoint(run)))[0] <= tol["weights"]
    for k in MOMENTS:
        assert update_error(m[k], m0[k])[0] <= tol["moments"], k


# ---- text with clipping active (issue 13.0: TP counted rank 0's shards in the grad norm) ---------------------
@pytest.fixture(scope="module")
def text(tmp_path_factory):
    from nca_scale import cli

    d = tmp_path_factory.mktemp("text")
    assert cli.main(["corpus", "build", "code", f"out={d / 'code'}"]) == 0
    assert cli.main(["tokenizer", "train", str(d / "code"), f"out={d / 'tok'}", "vocab_size=800",
                     "max_train_bytes=300000", "threads=2"]) == 0
    for split, tokens in (("train", 13000), ("val", 1000)):  # 12 steps x 8 rows x 129 tokens
        assert cli.main(["corpus", "tokenize", str(d / "code"), f"tokenizer={d / 'tok'}", f"out={d / split}",
                         f"split={split}", "seq_len=128", f"tokens={tokens}"]) == 0
    # with grouped-query attention and tied embeddings (under PP the last stage holds its own copy)
    return ("data.source=text_shards", f"data.shards={d / 'train'}", f"data.val_shards={d / 'val'}", "steps=12",
            "model.n_kv_heads=2", "model.tie_embeddings=true")


@pytest.fixture(scope="module")
def text_single(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-single") / "run"
    train(out, *text)
    return out


# the plain (non-distributed) optimizer's state is sharded like the model, so it reshards with it
RESHARDABLE = ("backend=megatron", "megatron.distributed_optimizer=false")


@pytest.fixture(scope="module")
def text_tp2(text, tmp_path_factory):
    """TP=2 without sequence parallelism and with the plain optimizer; its step-9 checkpoint is resharded."""
    out = tmp_path_factory.mktemp("text-tp2") / "run"
    train(out, *text, "parallel.nproc=2", "parallel.tp=2", "checkpoint.every=9", *RESHARDABLE)
    return out


@pytest.fixture(scope="module")
def text_tp2_pp2_sp(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("text-tp2-pp2") / "run"
    train(out, *text, "backend=megatron", "parallel.nproc=4", "parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true")
    return out


@pytest.mark.parametrize("layout", ["text_tp2", "text_tp2_pp2_sp"], ids=["tp2", "tp2-pp2-sp"])
def test_tensor_parallel_clips_like_the_single_process(layout, text_single, request):
    clip = 1.0  # configs/train/cpu-tiny.yaml
    assert sum(g > clip for g in grad_norms(text_single)) >= 6, grad_norms(text_single)  # clipping is active
    assert_same_training(request.getfixturevalue(layout), text_single, FP32)


@pytest.mark.parametrize("target", [("parallel.nproc=1",), ("parallel.nproc=2", "parallel.pp=2")], ids=["tp1", "pp2"])
def test_tp2_checkpoint_continues_under_another_layout(target, text, text_tp2, tmp_path):
    """Steps 10-12 on the resharded weights and optimizer state are those of the uninterrupted TP=2 run."""
    out = tmp_path / "resharded"
    train(out, *text, f"resume={text_tp2}/checkpoints/step_00000009", *target, *RESHARDABLE)
    assert_continues(out, text_tp2, start=9)


# ---- the layouts on NCA data, against the session's torch reference --------------------------------------
def test_tensor_and_sequence_parallel_match_single_process(megatron_tp2, reference):
    assert_same_training(megatron_tp2, reference, FP32)


# PP=2 with the 1F1B schedule: in TP=2 x PP=2 above (and resharded to from TP=2)
def test_interleaved_pipeline_matches_single_process(reference, tmp_path):
    out = tmp_path / "run"
    train(out, "steps=10", *MEGATRON, "parallel.pp=2", "parallel.vpp=2")
    # the reference is the torch backend: same init (nca_scale.model.layout), same data, same optimizer
    assert_same_training(out, reference, FP32)


@pytest.fixture(scope="module")
def dp2(tmp_path_factory):
    """DP=2 with the distributed optimizer and the GPU's overlapped gradient reduce and parameter gather (off on a
    CPU by default); its step-7 checkpoint continues on one rank."""
    out = tmp_path_factory.mktemp("dp2") / "run"
    train(out, "steps=10", *MEGATRON, "parallel.dp=2", *GPU_OVERLAP, "checkpoint.every=7")
    return out


def test_data_parallel_with_distributed_optimizer_matches_single_process(dp2, reference):
    assert_same_training(dp2, reference, FP32)


def test_dp2_distributed_optimizer_checkpoint_continues_on_one_rank(dp2, tmp_path):
    out = tmp_path / "dp1"
    train(out, "steps=10", "backend=megatron", f"resume={dp2}/checkpoints/step_00000007")
    assert_continues(out, dp2, start=7)


# ---- the distributed optimizer's fully reshardable checkpoints (megatron.optimizer_layout) ----------------
@pytest.fixture(scope="module")
def tp2_pp2_dp2(tmp_path_factory):
    """8 ranks, TP=2 x PP=2 x DP=2 with the distributed optimizer, whose layout defaults to fully_reshardable
    there: the session reference's first 3 steps (its LR schedule over 10), saved at step 3."""
    out = tmp_path_factory.mktemp("tp2-pp2-dp2") / "run"
    train(out, "steps=3", "schedule.total=10", "backend=megatron", "parallel.nproc=8", "parallel.tp=2", "parallel.pp=2",
          timeout=600)
    return out


@pytest.mark.parametrize("target", [("parallel.nproc=1",), ("parallel.nproc=8", "parallel.tp=2")], ids=["tp1", "tp2-dp4"])
def test_fully_reshardable_checkpoint_continues_under_another_tp_pp_dp(target, tp2_pp2_dp2, reference, tmp_path):
    """The TP=2 x PP=2 x DP=2 step-3 checkpoint continued to step 10 on one rank and on TP=2 x DP=4: steps 4-10
    and the final weights and Adam moments are the single process's within the fp32 layout tolerances (a wrong
    or missing moment after the reshard moves step 4 by far more; a TP/PP change of dp_reshardable state is
    refused before launch)."""
    out = tmp_path / "resharded"
    train(out, "steps=10", "schedule.total=10", "backend=megatron", f"resume={tp2_pp2_dp2}/checkpoints/step_00000003",
          *target, timeout=600)
    assert_continues(out, reference, start=3)


def test_optimizer_layout_default_and_refusals():
    """fully_reshardable where the layout has TP or PP; checkpoints of earlier releases are dp_reshardable; the
    deprecated fully_sharded_model_space and keys without effect are refused."""
    from nca_scale.errors import UserError
    from nca_scale.train.backends import MegatronConfig
    from nca_scale.train.backends.megatron.format import _optimizer_layout

    m = MegatronConfig()
    assert [m.optimizer_sharding(tp, pp) for tp, pp in ((1, 1), (2, 1), (1, 2), (2, 2))] == [
        "dp_reshardable", "fully_reshardable", "fully_reshardable", "fully_reshardable"]
    assert MegatronConfig(optimizer_layout="dp_reshardable").optimizer_sharding(2, 2) == "dp_reshardable"
    assert _optimizer_layout({"distributed_optimizer": True}, {"tp": 2, "pp": 2}) == "dp_reshardable"  # older runs
    assert _optimizer_layout({"optimizer_layout": None}, {"tp": 2, "pp": 1}) == "fully_reshardable"
    with pytest.raises(UserError, match="megatron-core 0.16 deprecates fully_sharded_model_space"):
        MegatronConfig(optimizer_layout="fully_sharded_model_space").validate("megatron", "adamw")
    with pytest.raises(UserError, match="with megatron.distributed_optimizer=false the optimizer reshards"):
        MegatronConfig(optimizer_layout="fully_reshardable", distributed_optimizer=False).validate("megatron", "sgd")
    with pytest.raises(UserError, match="megatron.grad_reduce_in_fp32 is a megatron setting and backend=torch"):
        MegatronConfig(grad_reduce_in_fp32=False).validate("torch", "adamw")


def test_plain_sgd_data_parallel_matches_single_process(reference_sgd, tmp_path):
    """SGD's update is the gradient itself: a gradient scaled by a constant (DP ranks summed instead of
    averaged, a replicated gradient counted twice) moves the weights by that factor, where Adam hides it."""
    out = tmp_path / "dp2"
    train(out, "steps=10", *SGD, "parallel.nproc=2", "parallel.dp=2", *RESHARDABLE)  # megatron's distributed optimizer is Adam-only
    assert_same_training(out, reference_sgd, FP32)


def test_resume_is_bit_identical(tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    # distributed optimizer, dropout on, overlapped as on a GPU
    common = (*MEGATRON, "parallel.dp=2", *GPU_OVERLAP, "model.attn_dropout=0.1", "schedule.total=6")
    train(full, "steps=6", "checkpoint.every=3", *common)
    train(split, "steps=6", f"resume={full}/checkpoints/step_00000003", *common)
    assert_continues(split, full, start=3, tol={"loss": 0, "grad_norm": 0, "weights": 0, "moments": 0})


def test_sgd_with_the_distributed_optimizer_is_refused():
    from nca_scale.errors import UserError
    from nca_scale.train.config import from_args

    with pytest.raises(UserError, match="^megatron-core's distributed optimizer supports Adam only; with optim.name=sgd"
                                        " set megatron.distributed_optimizer=false$"):
        from_args(["configs/train/cpu-tiny.yaml", "backend=megatron", "optim.name=sgd"])


# ---- bf16: Float16Module with fp32 main params vs torch autocast ----------------------------------------
def test_bf16_tensor_parallel_matches_single_process(megatron_tp2_bf16, reference_bf16):
    assert_same_training(megatron_tp2_bf16, reference_bf16, BF16)


def test_bf16_data_parallel_plain_optimizer_matches_single_process(reference_bf16, tmp_path):
    out = tmp_path / "run"  # Float16OptimizerWithFloat16Params: fp32 main params outside the distributed optimizer
    train(out, "steps=10", "precision=bf16", *MEGATRON, "parallel.dp=2", "megatron.distributed_optimizer=false")
    assert_same_training(out, reference_bf16, BF16)


def test_phase_timers_split_each_step(megatron_tp2_bf16):
    assert_phase_timers(megatron_tp2_bf16, saved_at=7)  # its checkpoint.every


def test_bf16_resume_is_bit_identical(megatron_tp2_bf16, tmp_path):
    out = tmp_path / "resumed"
    train(out, "steps=10", "precision=bf16", *MEGATRON, "parallel.tp=2", f"resume={megatron_tp2_bf16}/checkpoints/step_00000007")
    assert_continues(out, megatron_tp2_bf16, start=7, tol={"loss": 0, "grad_norm": 0, "weights": 0, "moments": 0})


# ---- TransformerEngine's FusedAdam gets no per-parameter step (issue 14.2) --------------------------------
def test_only_torch_adam_gets_the_injected_step():
    from nca_scale.train.backends.megatron.engine import ensure_optimizer_state

    class FusedAdam(torch.optim.Optimizer):  # stands in for TE's: step per group, none per parameter
        def __init__(self, params):
            super().__init__(params, {"lr": 1e-3})

    def init_state(opt, config):
        for p in opt.param_groups[0]["params"]:
            opt.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))

    for cls, has_step in ((torch.optim.Adam, True), (torch.optim.AdamW, True), (FusedAdam, False)):
        p = torch.nn.Parameter(torch.ones(3))
        opt = SimpleNamespace(optimizer=cls([p]), init_state_fn=init_state, config=None)
        ensure_optimizer_state(opt)
        assert set(opt.optimizer.state[p]) == {"exp_avg", "exp_avg_sq"} | ({"step"} if has_step else set())
    sgd = SimpleNamespace(optimizer=torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1), init_state_fn=None)
    ensure_optimizer_state(sgd)  # megatron gives SGD no init_state_fn: nothing to create
    assert not sgd.optimizer.state
