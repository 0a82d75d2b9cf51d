"""`nca-scale status RUN` for any run folder, from its files alone (issue 25): running (a live lease, with an ETA),
stale lease, finished, stopped after a signal, not running (killed); a folder that is neither a run nor holds jobs
is one error line."""

from __future__ import annotations

import json
import socket
import time

import pytest

from nca_scale import cli
from nca_scale.config import load
from nca_scale.train import lease, run_folder
from nca_scale.train.config import TrainConfig
from nca_scale.train.run_files import EvalRow, MetricsWriter, Progress, TrainRow

CONFIG = "configs/train/cpu-tiny.yaml"


def _run_folder(out, stopped: str | None, holder: dict | None = None) -> None:
    """A run folder of 40 steps (of 100) as a training leaves it: config.yaml, metrics, progress, `latest`."""
    cfg = load(TrainConfig, CONFIG, [("out", str(out)), ("steps", "100")])
    run_folder.write_config(cfg)
    writer = MetricsWriter(out)
    writer.append(TrainRow(40, 40 * 1024, 3.25, 1e-3, 0.5, {"tokens_per_s": 2048.0}))
    writer.append(EvalRow(40, 40 * 1024, 3.5, 33.12))
    Progress(40, 40 * 1024, time.time(), 0.5, stopped=stopped).write(out)
    (out / "checkpoints").mkdir()
    (out / "checkpoints/latest").write_text("step_00000040\n")
    if holder is not None:
        now = time.time()
        (out / lease.NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "started": now,
                                                  "heartbeat": now, "token": "t", **holder}))


@pytest.mark.parametrize("stopped, holder, state", [
    (None, {}, "running (host {host}, pid 1), step 40/100, loss 3.2500, eval loss 3.5000 (ppl 33.12) at step 40, "
               "2,048 tokens/s, ETA 00:00:30, checkpoint step_00000040"),
    (None, {"host": "gone-node", "heartbeat": 0.0}, "stale lease (host gone-node, pid 1"),
    ("finished", None, "finished, step 40/100, loss 3.2500"),
    ("SIGINT", None, "stopped (SIGINT; resume=auto continues), step 40/100"),
    (None, None, "not running (killed or failed: no end recorded; resume=auto continues from the latest checkpoint)"),
])
def test_status_of_any_run_folder(tmp_path, capsys, stopped, holder, state):
    out = tmp_path / "run"
    _run_folder(out, stopped, holder)
    capsys.readouterr()
    assert cli.main(["status", str(out)]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{out}: " + state.format(host=socket.gethostname()))
    assert cli.main(["status", str(out), "format=json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["out"] == str(out) and row["run"]["step"] == 40 and row["run"]["total"] == 100


def test_status_of_a_folder_without_a_run_is_one_error_line(tmp_path, capsys):
    assert cli.main(["status", str(tmp_path)]) == 2
    assert "is neither a run folder" in capsys.readouterr().err
