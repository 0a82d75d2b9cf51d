"""The training loop in-process (issue 26): the real Trainer, callbacks, Saver, commit protocol and run files
around a fake Engine (fake_engine.py), in a one-rank process group of this process. Save cadence (checkpoint.every,
every_minutes, the final save, background writes), stops (request_stop, a preemption signal), rollback on
non-finite losses, skipped steps across a resume, divergence, evaluation cadence, callback order and what each
callback writes. The whole file runs in seconds; what needs processes (real backends, signals across
processes, kill -9) stays in test_preemption.py, test_nonfinite.py, test_chaos.py and test_saver.py."""

from __future__ import annotations

import json
import logging
import math
import signal
import time

import pytest
import torch
import torch.distributed as dist
from fake_engine import ALWAYS, FakeEngine

from nca_scale.train import checkpoint, preemption, run_files, run_state
from nca_scale.train.backends.base import Engine
from nca_scale.train.callbacks import Callback
from nca_scale.train.config import from_args
from nca_scale.train.trainer import Trainer, default_callbacks

ARGS = ["configs/train/cpu-tiny.yaml", "model.n_layers=2", "data.nca.bank.size=8", "data.nca.bank.val_size=4",
        "wandb=disabled", "progress=false", "eval_every=0", "schedule.warmup=0", "checkpoint.keep_last=20"]


@pytest.fixture(scope="module", autouse=True)
def one_rank_group(tmp_path_factory):
    """The Trainer's collectives (the preemption flags) on a one-rank group of this process."""
    if dist.is_initialized():  # another in-process test of this worker made one
        assert dist.get_world_size() == 1
        yield
        return
    store = dist.FileStore(str(tmp_path_factory.mktemp("group") / "store"), 1)
    # the flags' all-reduce runs on the device's tensors (train/dist.py: NCCL where there is a GPU)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(autouse=True)
def check_every_step(monkeypatch):
    """Preemption reads its flags about once per second of training; these steps take milliseconds."""
    monkeypatch.setattr(preemption, "CHECK_S", 0.0)


def make(out, *overrides: str, engine: FakeEngine | None = None, extra: tuple[Callback, ...] = ()) -> Trainer:
    cfg = from_args([*ARGS, f"out={out}", *overrides]).resolved()
    out.mkdir(parents=True, exist_ok=True)  # as trainer.run makes it
    return Trainer(cfg, engine or FakeEngine(), [*default_callbacks(cfg), *extra])


def committed(out) -> list[int]:
    return [checkpoint.read_meta(p)["step"] for p in checkpoint.complete_checkpoints(out)]


def train_rows(out) -> list[run_files.TrainRow]:
    return [r for r in run_files.read_metrics(out) if isinstance(r, run_files.TrainRow)]


def progress(out) -> run_files.Progress:
    return run_files.Progress.read(out)


class StopAt(Callback):
    """Asks the trainer to stop after `step` (what Preemption does once the ranks agree on a signal)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def post_step(self, trainer, metrics: dict) -> None:
        if trainer.step == self.step:
            trainer.request_stop(self.signum)


def test_the_fake_implements_the_engine_protocol():
    members = {n for n in vars(Engine) if not n.startswith("_")} | set(Engine.__annotations__)
    assert members == {"dp_rank", "dp_size", "phases", "train_step", "eval_loss", "save", "load"}
    engine = FakeEngine()
    assert all(hasattr(engine, n) for n in members)


# ---- saving


@pytest.mark.parametrize("background", [False, True])
def test_saves_every_n_steps_and_the_last_step(tmp_path, background):
    engine = FakeEngine(background=background)
    outcome = make(tmp_path, "steps=7", "checkpoint.every=3", engine=engine).fit()
    assert (outcome.step, outcome.kind, outcome.exit_code) == (7, "finished", 0)
    assert committed(tmp_path) == [3, 6, 7] and checkpoint.latest_name(tmp_path) == "step_00000007"
    assert engine.saves == ["step_00000003.tmp", "step_00000006.tmp", "step_00000007.tmp"]
    assert [r.step for r in train_rows(tmp_path)] == list(range(1, 8))
    assert json.loads((checkpoint.step_dir(tmp_path, 7) / "fake.json").read_text())["trained"] == list(range(7))
    assert progress(tmp_path).stopped == "finished"


def test_keep_last_prunes_and_a_committed_step_is_not_saved_twice(tmp_path):
    engine = FakeEngine()
    make(tmp_path, "steps=6", "checkpoint.every=2", "checkpoint.keep_last=2", engine=engine).fit()
    assert committed(tmp_path) == [4, 6]
    assert engine.saves == ["step_00000002.tmp", "step_00000004.tmp", "step_00000006.tmp"]  # 6: once


def test_a_background_save_is_committed_while_the_steps_go_on(tmp_path):
    """A save written in the background commits once its files are written (the 3rd poll, two steps later)."""
    engine = FakeEngine(background=True, polls=3)
    seen = []

    class Probe(Callback):
        priority = -5

        def post_step(self, trainer, metrics):
            seen.append((trainer.step, committed(trainer.cfg.out)))

    make(tmp_path, "steps=6", "checkpoint.every=2", engine=engine, extra=(Probe(),)).fit()
    # step 2's save begins after step 2; polled after steps 3, 4 (written at the 3rd poll: the one before step
    # 4's save, which first commits it)
    assert seen[:4] == [(1, []), (2, []), (3, []), (4, [2])], seen
    assert committed(tmp_path) == [2, 4, 6]


def test_a_background_save_past_its_deadline_is_abandoned_and_the_next_retries(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="nca_scale")
    engine = FakeEngine(background=True, polls=10**6)  # never written
    trainer = make(tmp_path, "steps=4", "checkpoint.every=2", "checkpoint.write_timeout_s=0.2", engine=engine)
    with pytest.raises(Exception, match="the checkpoint of step 4 could not be written"):
        trainer.fit()  # the last save of a run cannot be abandoned: it fails the run
    assert "the checkpoint of step 2 was abandoned (its files were not written within 0 s" in caplog.text
    assert committed(tmp_path) == []


def test_every_minutes_saves_on_the_wall_clock_counted_from_the_last_save(tmp_path, monkeypatch):
    """10 s per step (a fake clock), checkpoint.every=4 and every_minutes=0.5: a time-based save at 3, the
    periodic one at 4 restarts the clock (Trainer.saved_at), so the next time-based one is at 7, not 6."""
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    engine = FakeEngine(clock=clock, step_s=10.0)
    make(tmp_path, "steps=10", "checkpoint.every=4", "checkpoint.every_minutes=0.5", engine=engine).fit()
    assert [int(s[5:13]) for s in engine.saves] == [3, 4, 7, 8, 10]


def test_checkpoint_time_is_the_save_on_the_next_logged_line(tmp_path):
    """The time the loop is blocked saving (a 0.1 s save) is reported on the next logged line; log_every=2."""
    engine = FakeEngine(save_s=0.1)
    make(tmp_path, "steps=8", "checkpoint.every=3", "log_every=2", engine=engine).fit()
    rows = {r.step: r.measures["checkpoint_time"] for r in train_rows(tmp_path)}
    assert sorted(rows) == [2, 4, 6, 8]
    assert rows[4] >= 0.1 and rows[6] < 0.05 and rows[8] >= 0.1 and rows[2] < 0.05, rows  # saves after 3 and 6


# ---- stopping


def test_request_stop_saves_that_step_and_returns_the_signal(tmp_path):
    trainer = make(tmp_path, "steps=50", "eval_every=10", extra=(StopAt(3),))
    outcome = trainer.fit()
    assert (outcome.step, outcome.stop_signal, outcome.kind) == (3, signal.SIGTERM, "stopped")
    assert outcome.exit_code == preemption.EXIT_PREEMPTED
    assert committed(tmp_path) == [3] and progress(tmp_path).stopped == "SIGTERM"
    assert not [r for r in run_files.read_metrics(tmp_path) if isinstance(r, run_files.EvalRow)]  # not final
    assert run_state.read(tmp_path).state == "stopped"


@pytest.mark.parametrize("signum, status", [(signal.SIGUSR2, 75), (signal.SIGINT, 130)])
def test_a_preemption_signal_stops_at_the_next_check_with_its_status(tmp_path, signum, status):
    """The signal reaches this process during step 3 (the Preemption callback's handler): the ranks agree at the
    next check, the step is saved, and fit() returns its status; the handlers are restored afterwards."""
    engine = FakeEngine(on_step=lambda step: step == 2 and signal.raise_signal(signum))
    before = signal.getsignal(signum)
    outcome = make(tmp_path, "steps=50", engine=engine).fit()
    assert (outcome.step, outcome.stop_signal, outcome.exit_code) == (3, signum, status)
    assert committed(tmp_path) == [3] and progress(tmp_path).stopped == signal.Signals(signum).name
    assert signal.getsignal(signum) == before


def test_a_resume_after_a_stop_records_the_restart_and_ends_as_the_uninterrupted_run(tmp_path):
    alone = FakeEngine()
    make(tmp_path / "alone", "steps=8", engine=alone).fit()
    out = tmp_path / "run"
    make(out, "steps=8", extra=(StopAt(5, signal.SIGUSR2),)).fit()
    engine = FakeEngine()
    trainer = make(out, "steps=8", "resume=auto", engine=engine)
    trainer.resume(checkpoint.step_dir(out, 5))
    assert trainer.fit().kind == "finished"
    assert engine.state() == alone.state() and engine.calls == [5, 6, 7]
    restarts = [r for r in run_files.read_metrics(out) if isinstance(r, run_files.RestartRow)]
    assert [(r.step, r.restart, r.lost_steps, r.reason) for r in restarts] == [(5, 1, 0, "SIGUSR2")]
    assert [r.loss for r in train_rows(out)] == [r.loss for r in train_rows(tmp_path / "alone")]


# ---- non-finite losses


def test_rollback_reloads_the_last_checkpoint_and_skips_the_bad_step(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nca_scale")
    engine = FakeEngine(nonfinite={4: 1})  # a transient fault at step 5
    outcome = make(tmp_path, "steps=8", "checkpoint.every=2", "on_nonfinite=rollback", engine=engine).fit()
    assert outcome.kind == "finished" and outcome.exit_code == 0
    assert "step 5: loss nan, grad norm nan (non-finite): rolled back to step_00000004; step 5 will be skipped" \
        in caplog.text
    assert engine.loads == ["step_00000004"] and engine.trained == [0, 1, 2, 3, 5, 6, 7]
    assert [r.step for r in train_rows(tmp_path)] == [1, 2, 3, 4, 6, 7, 8]
    assert all(math.isfinite(r.loss) for r in train_rows(tmp_path))
    assert committed(tmp_path) == [2, 4, 6, 8]
    assert checkpoint.read_meta(checkpoint.step_dir(tmp_path, 8))["skipped_steps"] == [4]
    assert checkpoint.read_meta(checkpoint.step_dir(tmp_path, 4)).get("skipped_steps", []) == []


def test_skipped_steps_are_carried_across_a_resume(tmp_path):
    """Stopped after the rollback, resumed with a healthy engine: the resumed run's checkpoints still list step
    5 as skipped (a later rollback past it would skip it again), and the run ends with the weights and losses of
    the one that never stopped."""
    alone = FakeEngine(nonfinite={4: 1})
    make(tmp_path / "alone", "steps=8", "checkpoint.every=2", "on_nonfinite=rollback", engine=alone).fit()
    out = tmp_path / "run"
    make(out, "steps=8", "checkpoint.every=2", "on_nonfinite=rollback", engine=FakeEngine(nonfinite={4: 1}),
         extra=(StopAt(6),)).fit()
    engine = FakeEngine()
    trainer = make(out, "steps=8", "checkpoint.every=2", "on_nonfinite=rollback", "resume=auto", engine=engine)
    trainer.resume(checkpoint.step_dir(out, 6))
    trainer.fit()
    assert engine.state() == alone.state() and 4 not in engine.trained
    assert checkpoint.read_meta(checkpoint.step_dir(out, 8))["skipped_steps"] == [4]
    assert [r.loss for r in train_rows(out)] == [r.loss for r in train_rows(tmp_path / "alone")]


def test_a_nonfinite_loss_with_on_nonfinite_stop_diverges_without_saving(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="nca_scale")
    engine = FakeEngine(nonfinite={1: ALWAYS})
    outcome = make(tmp_path, "steps=4", "checkpoint.every=1", "eval_every=2", engine=engine).fit()
    assert (outcome.step, outcome.kind, outcome.stop_signal) == (1, "diverged", None)
    assert outcome.exit_code == preemption.EXIT_DIVERGED == 3
    assert outcome.diverged == ("step 2: loss nan, grad norm nan (non-finite); stopped without saving. Lower "
                                "optim.lr, check the data, or set on_nonfinite=rollback to skip such batches")
    assert f"diverged: {outcome.diverged} (exit status 3)" in caplog.text
    assert committed(tmp_path) == [1] and [r.step for r in run_files.read_metrics(tmp_path)] == [1]  # no eval
    assert progress(tmp_path).stopped == "diverged"
    state = run_state.read(tmp_path)
    assert state.state == "diverged" and state.line().startswith(f"{tmp_path}: diverged (a non-finite loss")


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    engine = FakeEngine(nonfinite={1: ALWAYS, 2: ALWAYS, 3: ALWAYS})  # every step after the first is NaN
    outcome = make(tmp_path, "steps=4", "checkpoint.every=1", "on_nonfinite=rollback", "max_rollbacks=2",
                   engine=engine).fit()
    assert outcome.kind == "diverged" and outcome.exit_code == 3 and outcome.step == 3  # steps 2 and 3 skipped
    assert outcome.diverged == ("step 4: loss nan, grad norm nan (non-finite) after 2 rollbacks (max_rollbacks); "
                                "stopped without saving")
    assert engine.loads == ["step_00000001", "step_00000001"] and committed(tmp_path) == [1]


def test_rollback_without_a_checkpoint_diverges(tmp_path):
    outcome = make(tmp_path, "steps=4", "on_nonfinite=rollback", engine=FakeEngine(nonfinite={1: 1})).fit()
    assert outcome.kind == "diverged" and committed(tmp_path) == []
    assert outcome.diverged.endswith("(non-finite) and no checkpoint to roll back to; set checkpoint.every=N")


# ---- evaluation, callbacks


def test_evaluation_every_n_steps_and_at_the_end(tmp_path):
    make(tmp_path, "steps=7", "eval_every=3").fit()
    evals = [r for r in run_files.read_metrics(tmp_path) if isinstance(r, run_files.EvalRow)]
    assert [r.step for r in evals] == [3, 6, 7] and all(r.eval_ppl == math.exp(r.eval_loss) for r in evals)


class Recorder(Callback):
    def __init__(self, name: str, priority: int, log: list):
        self.name, self.priority, self.log = name, priority, log

    def pre_train(self, trainer):
        self.log.append(("pre_train", self.name))

    def post_step(self, trainer, metrics):
        self.log.append(("post_step", self.name, sorted(metrics)))

    def post_train(self, trainer):
        self.log.append(("post_train", self.name))


def test_callbacks_run_by_priority_and_see_what_the_higher_ones_wrote(tmp_path):
    from nca_scale.train import callbacks as cb

    log: list = []
    probes = (Recorder("after-logs", cb.LOGS - 50, log), Recorder("first", cb.TESTS + 1, log))
    trainer = make(tmp_path, "steps=2", "checkpoint.every=1", extra=probes)
    order = [type(c).__name__ if not isinstance(c, Recorder) else c.name for c in trainer.callbacks]
    assert order == ["first", "SpeedMonitor", "MetricsLog", "Wandb", "ProgressBar", "RunProgress", "after-logs",
                     "Checkpointer", "Preemption", "RunSummary"]
    seen = {}

    class AtSaves(Callback):  # between the loggers and the checkpointer: the step is logged, not yet saved
        priority = cb.SAVES + 1

        def post_step(self, trainer, metrics):
            out = trainer.cfg.out
            seen[trainer.step] = ([r.step for r in train_rows(out)], committed(out), progress(out).step)

    out = tmp_path / "second"
    make(out, "steps=2", "checkpoint.every=1", extra=(AtSaves(),)).fit()
    assert seen == {1: ([1], [], 1), 2: ([1, 2], [1], 2)}
    trainer.fit()
    steps = [e for e in log if e[0] == "post_step"]
    assert [e[1] for e in steps] == ["first", "after-logs"] * 2
    assert "tokens_per_s" not in steps[0][2] and {"tokens_per_s", "mfu"} <= set(steps[1][2])
    assert [e for e in log if e[0] != "post_step"] == [("pre_train", "first"), ("pre_train", "after-logs"),
                                                       ("post_train", "first"), ("post_train", "after-logs")]


def test_what_each_callback_writes(tmp_path):
    """metrics.jsonl: one train row per logged step with the Trainer's and SpeedMonitor's keys; progress.json
    after every step and how the run ended; nothing else in the run folder but the checkpoints."""
    make(tmp_path, "steps=5", "log_every=2", "checkpoint.every=2").fit()
    rows = train_rows(tmp_path)
    assert [r.step for r in rows] == [2, 4, 5] and [r.tokens for r in rows] == [2048, 4096, 5120]
    assert set(rows[0].measures) - {"peak_memory_gib"} == {"step_time", "data_time", "fwd_bwd_time", "optimizer_time", "checkpoint_time",
                                     "tokens_per_s", "mfu"}
    assert all(r.lr > 0 and r.grad_norm == 0.5 for r in rows)
    p = progress(tmp_path)
    assert (p.step, p.tokens, p.restart, p.stopped) == (5, 5120, 0, "finished") and p.step_time > 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["checkpoints", "metrics.jsonl", "progress.json"]


# ---- the loop's test hook


def test_step_pacing_is_a_test_hook_of_the_environment_not_a_config_key(tmp_path, monkeypatch):
    """NCA_SCALE_TEST_STEP_TIME pads every step (its step_time included) through faults.test_callbacks(); the
    former key min_step_time is refused from a user with another value than its default, and dropped from the
    configs saved before it left (config version 1)."""
    from nca_scale.errors import UserError
    from nca_scale.train import faults
    from nca_scale.train.config_versions import read_saved

    assert faults.test_callbacks() == []
    monkeypatch.setenv(faults.STEP_TIME_ENV, "0.05")
    t0 = time.perf_counter()
    make(tmp_path, "steps=3").fit()
    assert time.perf_counter() - t0 >= 0.15 and all(r.measures["step_time"] >= 0.05 for r in train_rows(tmp_path))
    with pytest.raises(UserError, match="unknown key 'min_step_time'"):
        from_args([*ARGS, "min_step_time=0.5"])
    old = tmp_path / "config.yaml"  # an older run's OUT/config.yaml, given back to `nca-scale train`
    old.write_text("model: configs/model/cpu-tiny.yaml\ndata: {source: dyck}\nsteps: 7\nmin_step_time: 0.0\n")
    assert from_args([str(old)]).steps == 7
    old.write_text(old.read_text().replace("min_step_time: 0.0", "min_step_time: 0.5"))
    with pytest.raises(UserError, match="min_step_time was removed .*NCA_SCALE_TEST_STEP_TIME"):
        from_args([str(old)])
    assert "min_step_time" not in read_saved({"steps": 3, "min_step_time": 0.25}, "RUN/meta.json")
