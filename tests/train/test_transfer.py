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
    train(out, "steps=2", "parallel.nproc=2", f"init_from={source}", "transfer.freeze=[attn]")
    src, dst = state(source), state(out / "checkpoints/step_00000002")
    for name in src:
        assert torch.equal(dst[name], src[name]) == (".attn." in name), name


@pytest.mark.parametrize("src_run, dst_backend", [
    ("megatron_tp2", ("backend=torch",)),
    ("deepspeed_zero3", ("backend=megatron", "parallel.nproc=2", "parallel.pp=2")),
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


def _bytes_read(read) -> int:
    """Bytes this process read from files (the kernel's count of read syscalls) while `read()` ran."""
    def rchar() -> int:
        return int(next(line for line in open("/proc/self/io") if line.startswith("rchar:")).split()[1])

    before = rchar()
    read()
    return rchar() - before


def test_a_transfer_reads_no_optimizer_state_and_one_tensor_at_a_time(source):
    """The source is a DCP checkpoint with Adam's moments (2/3 of its bytes): reading its weights reads about
    the weights' bytes (here 7.6 MB for 6.2 MB of weights, of 18.6 MB), and the per-tensor reader (what
    init_from uses) about one tensor's (216 kB for a 64 kB tensor, .metadata read twice)."""
    from train_helpers import model_config

    from nca_scale.train.backends.torch.format import DCP
    from nca_scale.train.transfer import logical_reader, read_logical

    cfg = model_config(source)
    weights = read_logical(source, cfg)  # also imports what the reads need, before counting
    model_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    files = sum(p.stat().st_size for p in (source / DCP).iterdir())
    assert files > 2.9 * model_bytes  # the moments are there
    # the moments would make it >= 3x; the rest is DCP's .metadata, meta.json and per-item overhead
    assert _bytes_read(lambda: read_logical(source, cfg)) < 1.5 * model_bytes
    name = "layers.1.mlp.w_up.weight"
    one = weights[name].numel() * weights[name].element_size()
    metadata = (source / DCP / ".metadata").stat().st_size
    got = {}
    assert _bytes_read(lambda: got.setdefault(name, logical_reader(source, cfg)(name))) < one + 4 * metadata + 65536
    assert torch.equal(got[name], weights[name])
