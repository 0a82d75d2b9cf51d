"""Training from `nca-scale generate` shards sees exactly the tokens of the on-the-fly stream."""

import subprocess

from train_helpers import CLI, ROOT, losses, metrics, train

NCA = ["data.nca.bank.size=8", "data.nca.bank.val_size=4"]


def generate(out, split: str, sequences: int) -> None:
    overrides = [o.removeprefix("data.nca.") for o in NCA]
    cmd = [str(CLI), "generate", "configs/nca/tiny.yaml", f"out={out}", f"tokens={sequences * 129}", f"split={split}",
           "sequences_per_shard=16", "progress=false", *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)


def test_shards_train_like_the_stream(tmp_path):
    generate(tmp_path / "train", "train", 4 * 8)
    generate(tmp_path / "val", "val", 8)
    stream, shards = tmp_path / "stream", tmp_path / "shards"
    train(stream, "steps=4", "eval_every=4", "eval_batches=1")
    train(shards, "steps=4", "eval_every=4", "eval_batches=1", "data.source=nca_shards",
          f"data.shards={tmp_path / 'train'}", f"data.val_shards={tmp_path / 'val'}")
    assert losses(shards) == losses(stream)
    assert [m["eval_loss"] for m in metrics(shards) if "eval_loss" in m] == [
        m["eval_loss"] for m in metrics(stream) if "eval_loss" in m]
    # a run longer than the shards is refused with one clear line
    proc = train(tmp_path / "long", "steps=5", "data.source=nca_shards", f"data.shards={tmp_path / 'train'}", check=False)
    assert proc.returncode != 0 and "the shards hold 0..31" in proc.stderr
