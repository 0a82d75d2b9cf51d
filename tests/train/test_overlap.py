"""Overlap and fusion keys (docs/training.md, "Overlap and fusion"): null takes the device's default (on with a
GPU, off on a CPU), a fusion whose kernel the machine lacks is turned off with a logged line when null and
refused when true, keys the backend does not read are refused, and DeepSpeed's buckets follow the model's width.
The layouts themselves run with the GPU's overlap in tests/train/test_megatron.py (dp2, resume)."""

from __future__ import annotations

import logging

import pytest
import torch

from nca_scale.errors import UserError
from nca_scale.train.config import from_args

MEGATRON = ["configs/train/cpu-tiny.yaml", "backend=megatron"]


def _gpu(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    if present:  # dist.device() asks for the current device
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize("gpu, grad, param", [(True, True, True), (False, False, False)])
def test_null_overlap_is_the_devices_default(monkeypatch, gpu, grad, param):
    _gpu(monkeypatch, gpu)
    cfg = from_args(MEGATRON).resolved()
    assert (cfg.megatron.overlap_grad_reduce, cfg.megatron.overlap_param_gather) == (grad, param)


def test_parameters_are_gathered_in_the_forward_only_with_the_distributed_optimizer(monkeypatch):
    _gpu(monkeypatch, True)
    assert not from_args([*MEGATRON, "megatron.distributed_optimizer=false"]).resolved().megatron.overlap_param_gather
    assert not from_args([*MEGATRON, "megatron.overlap_grad_reduce=false"]).resolved().megatron.overlap_param_gather


def test_gpu_fusions_on_where_the_kernel_exists_off_with_a_line_where_not(monkeypatch, caplog):
    from megatron.core.models.common.embeddings import rope_utils  # noqa: F401  (imported before the mock)

    from nca_scale.train.backends.megatron import spec as megatron_spec

    _gpu(monkeypatch, True)  # no Apex, no TransformerEngine on this machine
    monkeypatch.setattr(megatron_spec, "compiles", lambda gpu: True)  # a GPU machine's C compiler and Triton
    with caplog.at_level(logging.INFO, logger="nca_scale.train.backends.megatron.spec"):
        got = megatron_spec.kernel_settings(from_args([*MEGATRON, "precision=bf16"]).resolved())
        fp32 = megatron_spec.kernel_settings(from_args([*MEGATRON, "precision=fp32"]).resolved())
    assert got == {"gradient_accumulation_fusion": False, "bias_activation_fusion": True,
                   "apply_rope_fusion": False, "cross_entropy_loss_fusion": True}
    assert not fp32["cross_entropy_loss_fusion"]  # its backward would round fp32 gradients to bf16
    off = ("grad_accum_fusion off (needs Apex's fused_weight_gradient_mlp_cuda and a GPU); rope_fusion off (needs "
           "TransformerEngine's fused RoPE and a GPU)")
    assert caplog.messages == [
        f"megatron overlap: grad reduce on, param gather on; fusions: bias_swiglu_fusion, cross_entropy_fusion; {off}; "
        "recompute off",
        f"megatron overlap: grad reduce on, param gather on; fusions: bias_swiglu_fusion; {off}; cross_entropy_fusion "
        "off (needs precision=bf16 (its backward returns bf16 gradients) and torch.compile (a C compiler, and Triton on "
        "a GPU)); recompute off"]


def test_cpu_fusions_are_off_unless_asked_and_recompute_is_passed_on(monkeypatch):
    from nca_scale.train.backends.megatron import spec as megatron_spec

    _gpu(monkeypatch, False)
    assert not any(megatron_spec.kernel_settings(from_args(MEGATRON).resolved()).values())
    got = megatron_spec.kernel_settings(from_args([*MEGATRON, "megatron.bias_swiglu_fusion=true", "recompute=selective"]).resolved())
    assert got["bias_activation_fusion"] and got["recompute_granularity"] == "selective"
    got = megatron_spec.kernel_settings(from_args([*MEGATRON, "recompute=true"]).resolved())
    assert (got["recompute_granularity"], got["recompute_method"], got["recompute_num_layers"]) == ("full", "uniform", 1)


@pytest.mark.parametrize("key, needs", [("grad_accum_fusion", "Apex's fused_weight_gradient_mlp_cuda and a GPU"),
                                        ("rope_fusion", "TransformerEngine's fused RoPE and a GPU"),
                                        ("cross_entropy_fusion", r"precision=bf16 \(its backward returns bf16 "
                                                                 r"gradients\) and torch.compile \(a C compiler, and "
                                                                 r"Triton on a GPU\)")])
def test_a_fusion_set_true_without_its_kernel_is_refused_before_the_model_is_built(monkeypatch, key, needs):
    from megatron.core.models.common.embeddings import rope_utils  # noqa: F401  (imported before the mock)

    from nca_scale.train.backends.megatron import spec as megatron_spec

    _gpu(monkeypatch, True)
    with pytest.raises(UserError, match=f"^megatron.{key}=true needs {needs}, which this machine lacks; set "
                                        rf"megatron.{key}=false, or leave it unset \(on where available\)$"):
        megatron_spec.kernel_settings(from_args([*MEGATRON, f"megatron.{key}=true"]).resolved())


@pytest.mark.parametrize("args, message", [
    (["megatron.overlap_grad_reduce=true"], "megatron.overlap_grad_reduce is a megatron setting and backend=torch does not read it"),
    (["backend=deepspeed", "megatron.rope_fusion=false"], "megatron.rope_fusion is a megatron setting and backend=deepspeed does not"),
    (["backend=megatron", "deepspeed.overlap_comm=false"], "deepspeed.overlap_comm=false is a DeepSpeed ZeRO setting and backend=megatron"),
    (["parallel.bucket_size=1000"], "parallel.bucket_size=1000: a positive number of elements, for backend=megatron or deepspeed"),
    (["backend=megatron", "megatron.overlap_param_gather=true", "megatron.distributed_optimizer=false"],
     "megatron.overlap_param_gather=true gathers what the distributed optimizer updated"),
    (["backend=megatron", "megatron.overlap_param_gather=true", "megatron.overlap_grad_reduce=false"],
     "megatron.overlap_param_gather=true needs megatron.overlap_grad_reduce"),
    (["backend=deepspeed", "recompute=selective"], "recompute=selective is megatron's"),
])
def test_keys_the_backend_does_not_read_are_refused(args, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        from_args(["configs/train/cpu-tiny.yaml", *args])


@pytest.mark.parametrize("zero, extra, want", [
    (2, [], {"reduce_bucket_size": 64 * 64, "allgather_bucket_size": 64 * 64}),
    (3, [], {"reduce_bucket_size": 64 * 64, "stage3_prefetch_bucket_size": int(0.9 * 64 * 64)}),
    (2, ["parallel.bucket_size=5000000", "deepspeed.overlap_comm=false"], {"reduce_bucket_size": 5_000_000, "overlap_comm": False}),
])
def test_deepspeed_buckets_follow_the_model_width(zero, extra, want):
    from nca_scale.train.backends.deepspeed.engine import zero_buckets

    cfg = from_args(["configs/train/cpu-tiny.yaml", "backend=deepspeed", f"deepspeed.zero={zero}", *extra]).resolved()
    assert cfg.model.d_model == 64
    got = zero_buckets(cfg)
    assert {k: got[k] for k in want} == want and got["contiguous_gradients"] is True
    assert got["overlap_comm"] is ("deepspeed.overlap_comm=false" not in extra)
