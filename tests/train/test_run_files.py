"""OUT/metrics.jsonl and OUT/progress.json through their one writer and reader (nca_scale/train/run_files.py)."""

import json

from nca_scale.train import run_files as rf


def test_rows_round_trip_flat_with_version_and_kind(tmp_path):
    writer = rf.MetricsWriter(tmp_path)
    rows = [
        rf.TrainRow(1, 64, 5.5, 1e-3, 0.7, {"step_time": 0.1, "mfu": None}),
        rf.EvalRow(1, 64, 5.4, 221.4),
        rf.RestartRow(1, 64, 1, 2, 128, 0.25, "SIGUSR2"),
    ]
    for row in rows:
        writer.append(row)
    lines = [json.loads(x) for x in (tmp_path / rf.METRICS).read_text().splitlines()]
    assert [(d["v"], d["kind"]) for d in lines] == [(1, "train"), (1, "eval"), (1, "restart")]
    assert lines[0]["step_time"] == 0.1 and "measures" not in lines[0]  # flat: jq '.loss', wandb keys
    assert rf.read_metrics(tmp_path) == rows


def test_lines_before_the_version_field_torn_and_foreign_lines(tmp_path):
    (tmp_path / rf.METRICS).write_text(
        '{"step": 2, "tokens": 8, "loss": 3.0, "lr": 0.1, "grad_norm": 1.0, "step_time": 0.5}\n'
        '{"step": 2, "tokens": 8, "eval_loss": 2.5, "eval_ppl": 12.2}\n'
        '{"step": 2, "tokens": 8, "restart": 1, "lost_steps": 1, "lost_tokens": 4, "lost_seconds": 0.5, "reason": "killed"}\n'
        '{"v": 99, "kind": "train", "step": 3}\n'  # a newer format: not guessed at
        '{"v": 1, "kind": "train", "step": 3}\n'  # lacks fields of its kind
        '{"step": 3, "tokens": 12, "lo'  # cut by a kill
    )
    rows = rf.read_metrics(tmp_path)
    assert [type(r) for r in rows] == [rf.TrainRow, rf.EvalRow, rf.RestartRow]
    assert rows[0].measures == {"step_time": 0.5}
    s = rf.summary(tmp_path)
    assert (s.step, s.loss, s.restarts, s.lost_steps, [e.eval_loss for e in s.evals]) == (2, 3.0, 1, 1, [2.5])


def test_keep_until_drops_later_steps_and_the_torn_line(tmp_path):
    writer = rf.MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        writer.append(rf.TrainRow(step, step * 4, 1.0, 0.1, 1.0))
    with (tmp_path / rf.METRICS).open("a") as f:
        f.write('{"step": 4, "tok')
    writer.keep_until(2)
    assert [r.step for r in rf.read_metrics(tmp_path)] == [1, 2]
    assert (tmp_path / rf.METRICS).read_text().endswith("\n")


def test_progress_round_trip_and_absent(tmp_path):
    assert rf.Progress.read(tmp_path) is None
    p = rf.Progress(step=3, tokens=12, time=1.5, step_time=0.2, restart=1, job_id="7", stopped="SIGTERM")
    p.write(tmp_path)
    assert rf.Progress.read(tmp_path) == p and json.loads((tmp_path / rf.PROGRESS).read_text())["v"] == 1
