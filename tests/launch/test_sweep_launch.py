"""`nca-scale sweep launch` end to end through submitit's local executor: a tiny sweep (one NCA stage-1 run, then
scratch, NCA-transfer and compute-matched scratch on the code corpus) writes results.jsonl records that match the
contract (docs/sweeps.md) and the runs' own metrics files; a relaunch submits only what is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from launch_helpers import ROOT, nca

import nca_scale
from nca_scale.model.config import ModelConfig, flops_per_token, param_counts

KEYS = {"v", "sweep", "run", "stage", "config_hash", "code_version", "coords", "params", "non_embedding_params", "tokens",
        "flops", "stage1_flops", "eval_curve", "final", "wall_s", "restarts", "out"}
S1 = "s1-cpu-tiny-nca-b50-t2k-s0"
S2 = {"scratch": "s2-code-cpu-tiny-scratch-d4k-s0", "nca": "s2-code-cpu-tiny-nca-b50-t2k-d4k-s0",
      "scratch_matched": "s2-code-cpu-tiny-matched-nca-b50-t2k-d4k-s0"}


def tiny_spec(tmp_path: Path) -> Path:
    spec = {
        "name": "tiny", "out": str(tmp_path / "sweep"), "train": "configs/train/cpu-tiny.yaml", "sizes": ["cpu-tiny"],
        "seeds": [0], "seq_len": 128, "nca": "configs/nca/tiny.yaml",
        "arms": [{"arm": "scratch"}, {"arm": "nca", "band": "50+", "tokens": 2000}, {"arm": "scratch_matched"}],
        "domains": [{"domain": "code", "tokens": [4000]}],
        "recipe": {"batch_multiplier": 0.25}, "evals": 2,
        "overrides": {"wandb": "disabled", "progress": False, "eval_batches": 1, "data.nca.bank.size": 8,
                      "data.nca.bank.val_size": 4},
        "data": {"dir": str(tmp_path / "data"), "tokenizer": "configs/data/tokenizer-cpu.yaml",
                 "train_tokens": 40000, "val_tokens": 4000},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submitted(sweep: Path) -> list[str]:
    """The runs of the latest submission recorded in SWEEP_DIR/launch/jobs.jsonl."""
    recs = [json.loads(line) for line in (sweep / "launch" / "jobs.jsonl").read_text().splitlines()]
    return sorted(r["cell"]["run"] for r in recs if r["submission"] == recs[-1]["submission"])


def results(sweep: Path) -> dict[str, dict]:
    out = {}
    for line in (sweep / "results.jsonl").read_text().splitlines():
        if line.endswith("}"):  # a line the test cut in half is not a record
            rec = json.loads(line)
            out[rec["run"]] = rec
    return out


def check_record(rec: dict, plan: dict, s1_flops: float | None) -> None:
    assert set(rec) == KEYS
    metrics = [json.loads(line) for line in (Path(rec["out"]) / "metrics.jsonl").read_text().splitlines()]
    evals = [{k: m[k] for k in ("step", "tokens", "eval_loss", "eval_ppl")} for m in metrics if "eval_loss" in m]
    train = [m for m in metrics if "loss" in m]
    assert rec["eval_curve"] == evals and len(evals) >= 2
    assert rec["final"] == {"eval_loss": evals[-1]["eval_loss"], "eval_ppl": evals[-1]["eval_ppl"]}
    assert rec["tokens"] == train[-1]["tokens"] == plan["tokens"]
    vocab = 10002 if rec["stage"] == 1 else 1000  # NCA tokens / the cpu tokenizer
    model = ModelConfig(**yaml.safe_load((ROOT / "configs/model/cpu-tiny.yaml").read_text())).with_vocab(vocab)
    assert rec["flops"] == flops_per_token(model, 128)["train"] * rec["tokens"]
    counts = param_counts(model)
    assert (rec["params"], rec["non_embedding_params"]) == (counts["total"], counts["non_embedding"])
    assert rec["coords"] == plan["coords"] and rec["stage1_flops"] == s1_flops
    assert rec["code_version"].startswith(nca_scale.__version__) and len(rec["config_hash"]) == 64
    assert rec["restarts"] == 0 and rec["wall_s"] > 0 and Path(rec["out"]) == Path(plan["out"]).resolve()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, env) -> tuple[Path, Path]:
    """(spec, SWEEP_DIR) of the tiny sweep, launched once for this module's tests."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = tiny_spec(tmp)
    nca(env, "sweep", "launch", str(spec), timeout=900)
    return spec, tmp / "sweep"


def test_launch_records_and_relaunch_submits_only_what_is_missing(tiny, env):
    spec, sweep = tiny
    plan = {r["name"]: r for r in json.loads((sweep / "plan.json").read_text())["runs"]}
    assert sorted(plan) == sorted([S1, *S2.values()]) and submitted(sweep) == sorted(plan)
    recs = results(sweep)
    assert sorted(recs) == sorted(plan)
    s1 = recs[S1]
    check_record(s1, plan[S1], None)
    for arm, name in S2.items():
        check_record(recs[name], plan[name], s1["flops"] if arm == "nca" else None)
        assert recs[name]["coords"]["arm"] == arm
    assert f"init_from={plan[S1]['out']}/checkpoints/step_{plan[S1]['steps']:08d}" in plan[S2["nca"]]["train_args"]
    # the compute-matched arm got the stage-1 FLOPs as extra language tokens
    matched, scratch = recs[S2["scratch_matched"]], recs[S2["scratch"]]
    per_token = scratch["flops"] / scratch["tokens"]
    assert matched["coords"]["extra"] == {"matched_to": "nca-b50-t2k"}
    assert abs((matched["tokens"] - scratch["tokens"]) * per_token - s1["flops"]) <= 2 * 7 * 128 * per_token

    proc = nca(env, "sweep", "launch", str(spec))  # everything finished: nothing is submitted
    assert "4 finished, 0 queued or running, 0 to submit" in proc.stdout
    assert submitted(sweep) == sorted(plan)

    # lose stage 1 and one stage-2 run (directories; stage 1's record removed, the other's cut in half as by a
    # job killed while appending it): only those two are submitted again, and they train to the same losses
    # (same seed, same data order)
    before = {n: recs[n]["final"] for n in (S1, S2["nca"])}
    lines = (sweep / "results.jsonl").read_text().splitlines()
    keep = [line[: len(line) // 2] if json.loads(line)["run"] == S2["nca"] else line
            for line in lines if json.loads(line)["run"] != S1]
    (sweep / "results.jsonl").write_text("\n".join(keep) + "\n")
    for name in (S1, S2["nca"]):
        shutil.rmtree(sweep / "runs" / name)
    proc = nca(env, "sweep", "status", str(spec), "format=json")
    states = {r["run"]: r["state"] for r in json.loads(proc.stdout)}
    assert states[S1] == states[S2["nca"]] == "INCOMPLETE" and states[S2["scratch"]] == "FINISHED"
    assert "results.jsonl line" in proc.stderr and "is not JSON (skipped)" in proc.stderr
    nca(env, "sweep", "launch", str(spec), timeout=600)
    assert submitted(sweep) == sorted([S1, S2["nca"]])
    again = results(sweep)
    assert sorted(again) == sorted(plan)
    check_record(again[S1], plan[S1], None)
    check_record(again[S2["nca"]], plan[S2["nca"]], again[S1]["flops"])
    assert {n: again[n]["final"] for n in before} == before


def test_launch_refuses_runs_the_data_cannot_feed(tmp_path, env):
    spec = tiny_spec(tmp_path)
    doc = yaml.safe_load(spec.read_text())
    doc["data"]["train_tokens"] = 1000  # fewer than the 4,000-token stage-2 runs need
    doc["arms"] = [{"arm": "scratch"}]
    spec.write_text(yaml.safe_dump(doc))
    proc = nca(env, "sweep", "launch", str(spec), check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "holds" in err[-1] and "raise data.train_tokens" in err[-1], proc.stderr
    assert not (tmp_path / "sweep" / "launch").exists()  # nothing was submitted


def final_and_curve(sweep: Path, run: str) -> tuple[float, list[float], list[float]]:
    """(final ppl, eval tokens, eval ppl) read from the run's own metrics.jsonl."""
    lines = [json.loads(line) for line in (sweep / "runs" / run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in lines if "eval_ppl" in m]
    return evals[-1]["eval_ppl"], [m["tokens"] for m in evals], [m["eval_ppl"] for m in evals]


def test_report_numbers_agree_with_the_metrics_files(tiny, env):
    """`nca-scale report` on the tiny sweep: final ppl, improvement vs scratch, convergence speedup and the
    compute-matched comparison, recomputed here from each run's metrics.jsonl."""
    spec, sweep = tiny
    nca(env, "report", str(sweep), "resamples=200", "fit_resamples=10", timeout=300)
    rep = json.loads((sweep / "report" / "report.json").read_text())
    ppl = {run: final_and_curve(sweep, run) for run in S2.values()}
    scratch_ppl, scratch_tokens, _ = ppl[S2["scratch"]]
    nca_ppl, nca_tokens, nca_curve = ppl[S2["nca"]]
    (row,) = [r for r in rep["vs_scratch"] if r["kind"] == "nca"]
    assert row["final_ppl"]["per_seed"]["0"] == pytest.approx(nca_ppl, rel=1e-12)
    assert row["scratch_final_ppl"]["per_seed"]["0"] == pytest.approx(scratch_ppl, rel=1e-12)
    assert row["improvement_pct"]["per_seed"]["0"] == pytest.approx(100 * (scratch_ppl - nca_ppl) / scratch_ppl)
    # convergence speedup: scratch's tokens / the tokens at which NCA first reaches scratch's final ppl
    cross = None
    for i, p in enumerate(nca_curve):
        if p <= scratch_ppl:
            t0, p0 = (nca_tokens[i - 1], nca_curve[i - 1]) if i else (nca_tokens[i], p)
            cross = nca_tokens[i] if i == 0 else t0 + (p0 - scratch_ppl) / (p0 - p) * (nca_tokens[i] - t0)
            break
    detail = row["speedup"]["detail"]["0"]
    # both outcomes are checked exactly: a speedup where the crossing exists, "none" where it does not
    assert detail["reached"] == (cross is not None)
    assert detail["speedup"] == (None if cross is None else pytest.approx(scratch_tokens[-1] / cross))
    # compute-matched: NCA (stage 1 + stage 2 FLOPs) vs scratch trained on the stage-1 FLOPs as extra tokens
    matched_ppl = ppl[S2["scratch_matched"]][0]
    (m,) = rep["compute_matched"]
    assert m["matched_final_ppl"]["per_seed"]["0"] == pytest.approx(matched_ppl, rel=1e-12)
    assert m["improvement_pct"]["per_seed"]["0"] == pytest.approx(100 * (matched_ppl - nca_ppl) / matched_ppl)
    recs = results(sweep)
    per_token = {r: recs[r]["flops"] / recs[r]["tokens"] for r in recs}
    nca_total = per_token[S2["nca"]] * nca_tokens[-1] + per_token[S1] * recs[S1]["tokens"]
    matched_total = per_token[S2["scratch_matched"]] * ppl[S2["scratch_matched"]][1][-1]
    assert m["flops_ratio"]["0"] == pytest.approx(matched_total / nca_total)
    assert abs(m["flops_ratio"]["0"] - 1) < 0.05  # compute-matched within one stage-2 step
