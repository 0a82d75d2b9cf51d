"""The megatron block spec without TransformerEngine (torch SDPA core attention, sequence-parallel RMSNorm)
against megatron-core's local spec (DotProductAttention, WrappedTorchNorm): the same GPTModel weights give the
same loss and gradients. Runs in a child process: megatron needs the CPU shim (backends/megatron/cpu_compat.py),
which must not leak into other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
VARIANTS = {"mha": {}, "gqa": {"num_query_groups": 2}, "gqa-dropout": {"num_query_groups": 2, "attention_dropout": 0.1}}


@pytest.fixture(scope="module")
def compared() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(HERE)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=HERE.parents[2])
    assert proc.returncode == 0, proc.stderr[-4000:]
    *logged, result = proc.stdout.strip().splitlines()
    return {**json.loads(result), "logged": logged}


@pytest.mark.parametrize("variant", VARIANTS)
def test_sdpa_spec_matches_the_local_spec(compared, variant):
    got = compared[variant]
    assert got["sdpa_modules"] == got["layers"] and got["local_modules"] == got["layers"]  # the specs really differ
    assert abs(got["loss_sdpa"] - got["loss_local"]) <= 1e-5 * abs(got["loss_local"]), got
    assert got["max_grad_rel_diff"] <= 1e-4, got


def test_start_up_line_names_kernel_norm_and_optimizer(compared):
    # logged on stdout (rank 0) by each first-chunk block_spec call: once per variant here, once per run
    lines = [compared[v]["describe"] for v in VARIANTS]
    assert [x for x in compared["logged"] if x.startswith("[nca-scale] megatron spec:")] == [
        f"[nca-scale] {line}" for line in lines]
    # torch's CPU dispatcher: its flash kernel without dropout, the math kernel with it
    assert [line.split("attention kernel: ")[1].split(";")[0] for line in lines] == [
        "flash_attention", "flash_attention", "math"]
    for line in lines:
        assert line.startswith("megatron spec: local + torch SDPA (attention kernel: ")
        assert "norm: torch RMSNorm, sequence parallel off" in line
        assert line.endswith("optimizer torch.optim.adamw.AdamW")  # megatron-core's pick without TE or Apex


def _gpu(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize("error", ["OSError('libcudnn.so.9: cannot open shared object file')",
                                   "RuntimeError('TransformerEngine was built for CUDA 12.8')"])
def test_a_transformer_engine_that_fails_to_import_falls_back_to_the_local_spec(error, monkeypatch, tmp_path, caplog):
    """A TE built for another CUDA/cuDNN raises OSError or RuntimeError on import, not ImportError."""
    from nca_scale.train.backends.megatron import spec as megatron_spec

    package = tmp_path / "transformer_engine" / "pytorch"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("transformer_engine", "transformer_engine.pytorch"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    _gpu(monkeypatch)
    megatron_spec.use_te.cache_clear()  # kept per process: this test's answer must not outlive it either
    try:
        with caplog.at_level("WARNING", logger="nca_scale.train.backends.megatron.spec"):
            assert megatron_spec.use_te() is False
            assert megatron_spec.use_te() is False  # asked again (each chunk's spec, the start-up line): one warning
    finally:
        megatron_spec.use_te.cache_clear()
    kind = error.split("(")[0]
    assert caplog.messages == [f"TransformerEngine is installed but does not import ({kind}: "
                               f"{error.split(chr(39))[1]}); using megatron-core's local spec with torch attention "
                               "(docs/gpu.md, \"Install on a cluster\")"]


@pytest.mark.parametrize("gpu, cc, triton, ok", [(True, "gcc", True, True), (True, "gcc", False, False),
                                                 (True, None, True, False), (False, "gcc", False, True),
                                                 (False, None, False, False)])
def test_torch_compile_fusions_need_a_c_compiler_and_triton_on_a_gpu(gpu, cc, triton, ok, monkeypatch):
    """megatron-core's fused SwiGLU and cross-entropy are torch.compile'd: without a C compiler (or Triton on a
    GPU) they are off when unset and refused when set."""
    import importlib.util
    import shutil

    from nca_scale.errors import UserError
    from nca_scale.train.backends.megatron import spec as megatron_spec
    from nca_scale.train.config import from_args

    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if cc and name == cc else None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (real("os") if triton else None)
                        if name == "triton" else real(name, *a))
    assert megatron_spec.compiles(gpu) is ok
    if gpu:
        _gpu(monkeypatch)
    args = ["configs/train/cpu-tiny.yaml", "backend=megatron", "precision=bf16"]
    got = megatron_spec.kernel_settings(from_args(args).resolved())
    assert got["bias_activation_fusion"] is (ok and gpu) and got["cross_entropy_loss_fusion"] is (ok and gpu)
    if not ok:
        with pytest.raises(UserError, match=r"^megatron.bias_swiglu_fusion=true needs torch.compile \(a C compiler, "
                                            r"and Triton on a GPU\), which this machine lacks"):
            megatron_spec.kernel_settings(from_args([*args, "megatron.bias_swiglu_fusion=true"]).resolved())


def _compare() -> dict:
    """Build each variant's GPTModel twice (local spec, our spec), copy the weights, run one forward/backward
    on the same tokens, return losses and the largest relative gradient difference."""
    import torch
    import torch.nn.functional as F

    from nca_scale.train import dist as tdist
    from nca_scale.train.backends.megatron import cpu_compat

    cpu_compat.activate()
    tdist.init()
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.transformer_config import TransformerConfig

    from nca_scale.train.backends.megatron import spec as megatron_spec

    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    train_cfg = type("Cfg", (), {"micro_batch": 2, "seq_len": 32, "optim": type("O", (), {"name": "adamw"})})()
    out: dict = {}
    for name, extra in VARIANTS.items():
        config = TransformerConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                                   normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
                                   add_bias_linear=False, hidden_dropout=0.0, use_cpu_initialization=True,
                                   **{"attention_dropout": 0.0, **extra})
        tokens = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(1))
        position_ids = torch.arange(32).unsqueeze(0).expand(2, 32)
        mask = torch.ones(32, 32, dtype=torch.bool).triu(1).view(1, 1, 32, 32)
        results = {}
        for label, spec in (("local", gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")),
                            ("sdpa", megatron_spec.block_spec(train_cfg, config, None))):
            model_parallel_cuda_manual_seed(123)
            model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=97, max_sequence_length=32,
                             position_embedding_type="rope")
            if label == "local":
                weights = {n: p.detach().clone() for n, p in model.named_parameters()}
            with torch.no_grad():  # the same parameter names in both specs: checkpoints and layout.py hold
                for n, p in model.named_parameters():
                    p.copy_(weights[n])
            model_parallel_cuda_manual_seed(7)  # the same dropout draws for both
            loss = model(tokens, position_ids, mask, labels=tokens.roll(-1, 1)).mean()
            loss.backward()
            kind = DotProductAttention if label == "local" else megatron_spec.SDPAttention
            results[label] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()},
                              sum(isinstance(m, kind) for m in model.modules()))
        (la, ga, na), (lb, gb, nb) = results["local"], results["sdpa"]
        rel = max(((ga[n] - gb[n]).abs().max() / ga[n].abs().max().clamp_min(1e-12)).item() for n in ga)
        out[name] = {"loss_local": la, "loss_sdpa": lb, "max_grad_rel_diff": rel, "layers": 2,
                     "local_modules": na, "sdpa_modules": nb, "describe": megatron_spec.describe(config, 2, 32, "adamw")}
    return out


if __name__ == "__main__":  # megatron's dist_checkpointing and the worker rely on this guard too
    print(json.dumps(_compare()))
