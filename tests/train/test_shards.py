"""Training from `nca-scale generate` shards sees exactly the tokens of the on-the-fly stream."""

import subprocess

from train_helpers import CLI, ROOT, losses, metrics, train

NCA = ["data.nca.bank.size=8", "data.nca.bank.val_size=4"]


def generate(out, split: str, sequences: int) -> None:
    overrides = [o.removeprefix("data.nca.") for o in NCA]
    cmd = [str(CLI), "generate", "configs/nca/tiny.yaml", f"out={out}", f"tokens={sequences * 129}", f"split={split}",
           "sequences_per_shard=16", "progress=false", *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)


def test_shards_train_like_the_stream(reference, tmp_path):
    generate(tmp_path / "train", "train", 5 * 8)
    generate(tmp_path / "val", "val", 8)
    out = tmp_path / "shards"
    train(out, "steps=5", "schedule.total=10", "eval_every=5", "eval_batches=1", "data.source=nca_shards",
          f"data.shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}")
    # the reference streamed the same indices with the same schedule: bitwise the same run
    assert losses(out) == losses(reference)[:5]
    assert [m for m in metrics(out) if "eval_loss" in m][0]["eval_loss"] == [
        m for m in metrics(reference) if "eval_loss" in m][0]["eval_loss"]
