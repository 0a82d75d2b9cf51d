"""init_from=CKPT: embeddings and head are new, every other tensor equals the source; reinit/freeze act on
exactly the modules and layers they name; sources from every backend load into every other."""

import pytest
import torch
from train_helpers import metrics, state, train

pytestmark = pytest.mark.slow  # every test trains in subprocesses

EMBEDDINGS = ("tok_emb.weight", "head.weight")


def assert_initialised(t: torch.Tensor, name: str, src: torch.Tensor | None = None) -> None:
    """`t` is a new initial value as documented (docs/training.md: norms 1, everything else N(0, 0.02)), not
    the source's tensor. Checked by its statistics, not by calling the init code under test."""
    if name.endswith("norm.weight"):
        assert torch.equal(t, torch.ones_like(t)), name
        return
    assert src is None or not torch.equal(t, src), name
    x = t.double()  # >= 16,384 values: the sample std is within 0.6% (1 sigma) of 0.02
    assert abs(x.std().item() / 0.02 - 1) < 0.03 and abs(x.mean().item()) < 5 * 0.02 / x.numel() ** 0.5, name


def eval_loss(out) -> float:
    return [m for m in metrics(out) if "eval_loss" in m][-1]["eval_loss"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "run"
    train(out, "steps=2")
    return out / "checkpoints/step_00000002"


def test_default_transfer_renews_embeddings_and_copies_the_rest(source, tmp_path):
    out = tmp_path / "run"
    train(out, "steps=0", f"init_from={source}", "model.vocab_size=10010")  # a new vocabulary is allowed
    src, dst = state(source), state(out / "checkpoints/step_00000000")
    for name in EMBEDDINGS:
        assert dst[name].shape == (10010, 64)
        assert_initialised(dst[name], name)
    rest = [n for n in src if n not in EMBEDDINGS]
    assert len(rest) == 4 * 9 + 1 and all(torch.equal(dst[n], src[n]) for n in rest)


def test_reinit_names_exactly_its_modules_and_layers(source, tmp_path):
    out = tmp_path / "run"
    train(out, "steps=0", f"init_from={source}", "transfer.reinit=[mlp,norm]", "transfer.layers=[1,3]")
    src, dst = state(source), state(out / "checkpoints/step_00000000")
    renewed = [n for n in src if n in EMBEDDINGS or (n.startswith(("layers.1.", "layers.2."))
                                                     and (".mlp." in n or "_norm." in n))]
    assert len(renewed) == 2 + 2 * (3 + 2)  # layers 1 and 2: gate, up, down, two norms
    for name in src:
        if name in renewed:
            assert_initialised(dst[name], name, src[name])
        else:
            assert torch.equal(dst[name], src[name]), name


def test_freeze_keeps_exactly_its_modules(source, tmp_path):
    out = tmp_path / "run"
    train(out, "steps=2", "nproc=2", f"init_from={source}", "transfer.freeze=[attn]")
    src, dst = state(source), state(out / "checkpoints/step_00000002")
    for name in src:
        assert torch.equal(dst[name], src[name]) == (".attn." in name), name


@pytest.mark.parametrize("src_run, dst_backend", [
    ("megatron_tp2", ("backend=torch",)),
    ("deepspeed_zero3", ("backend=megatron", "nproc=2", "pp=2")),
], ids=["megatron-tp2-to-torch", "deepspeed-zero3-to-megatron-pp2"])
def test_transfer_across_backends_keeps_the_model(src_run, dst_backend, request, tmp_path):
    src, dst = request.getfixturevalue(src_run), tmp_path / "dst"
    ckpt = src / "checkpoints/step_00000010"
    train(dst, "steps=0", "eval_every=1", f"init_from={ckpt}", "transfer.reinit_embeddings=false", *dst_backend)
    # the same weights under another backend and layout give the same held-out loss
    assert abs(eval_loss(dst) - eval_loss(src)) < 1e-5 * eval_loss(src)


def test_a_new_vocabulary_needs_new_embeddings(source, capsys):
    from train_helpers import ROOT

    from nca_scale.cli import main

    args = ["train", str(ROOT / "configs/train/cpu-tiny.yaml"), f"init_from={source}", "model.n_layers=4"]
    assert main([*args, "transfer.reinit_embeddings=false", "model.vocab_size=10010"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has vocabulary 10002, this run 10010" in err and len(err.splitlines()) == 1
    assert main([*args, "model.d_model=128"]) == 2
    assert "tensor layers.0.attn_norm.weight is (64,) there, (128,) here" in capsys.readouterr().err
