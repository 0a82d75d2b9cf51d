"""`nca-scale eval` end to end on CPU: a tiny trained model on every task, results as JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from eval_helpers import CLI, ENV

pytestmark = pytest.mark.slow


def nca_eval(*args, check=True) -> subprocess.CompletedProcess:
    """`nca-scale eval` as a separate process (the console script)."""
    r = subprocess.run([CLI, "eval", *map(str, args)], env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-4000:]
    return r


def eval_in_process(*args) -> int:
    """The same command line through nca_scale.cli.main, without paying for another interpreter start."""
    from nca_scale.cli import main

    return main(["eval", *map(str, args)])


@pytest.mark.timeout(1200)  # every task and an export in one test: 7 minutes on a loaded 2-core machine
def test_eval_every_task_end_to_end(tiny_run, sp_model, tiny_bigbench, tmp_path):
    ckpt = tiny_run / "checkpoints" / "step_00000003"
    corpus = tmp_path / "heldout.jsonl"
    stdlib = Path(os.__file__).parent
    corpus.write_text(
        "".join(
            json.dumps({"text": p.read_text()}) + "\n" for p in sorted((stdlib / "email").glob("_*.py"))[:3]
        )
    )

    # held-out perplexity: the NCA val split and a text corpus; the HF export gives the same number
    nca_eval(tiny_run, "task=ppl", "data=nca", "max_sequences=8")
    ppl = json.loads((tiny_run / "eval" / "ppl-step00000003.json").read_text())["metrics"]
    # the same 8 val sequences the trainer evaluated at step 3 (its eval batch), through another code path
    logged = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "eval_loss" in m]
    assert [m["step"] for m in logged] == [3]
    assert ppl["sequences"] == 8 and ppl["tokens"] == 8 * (128 - 37)  # the first frame (37 targets) is masked
    assert ppl["loss"] == pytest.approx(logged[0]["eval_loss"], rel=1e-5)
    assert ppl["ppl"] == pytest.approx(math.exp(ppl["loss"]), rel=1e-12)
    assert 0 == eval_in_process(
        ckpt,
        "task=ppl",
        f"data={corpus}",
        f"tokenizer={sp_model}",
        "allow_vocab_mismatch=true",  # an NCA model (vocabulary 10,002) with a 500-piece tokenizer: a pipeline test
        "seq_len=64",
        "max_sequences=12",
        f"out={tmp_path / 'text.json'}",
    )
    text = json.loads((tmp_path / "text.json").read_text())
    assert text["metrics"]["tokens"] == 12 * 64 and text["data"]["kind"] == "text"
    subprocess.run(
        [CLI, "export", ckpt, f"out={tmp_path / 'hf'}", f"tokenizer={sp_model}", "allow_vocab_mismatch=true"],
        env=ENV,
        check=True,
        capture_output=True,
    )
    assert 0 == eval_in_process(
        tmp_path / "hf",
        "task=ppl",
        f"data={corpus}",
        "allow_vocab_mismatch=true",
        "seq_len=64",
        "max_sequences=12",
        f"out={tmp_path / 'hf.json'}",
    )
    assert json.loads((tmp_path / "hf.json").read_text())["metrics"]["loss"] == pytest.approx(
        text["metrics"]["loss"], rel=1e-6
    )

    # HumanEval: generation (KV cache, paper stop strings) and sandboxed execution of every sample
    assert 0 == eval_in_process(
        ckpt,
        "task=humaneval",
        f"tokenizer={sp_model}",
        "allow_vocab_mismatch=true",  # an NCA model (vocabulary 10,002) with a 500-piece tokenizer: a pipeline test
        "limit=2",
        "n=3",
        "max_new_tokens=12",
        "ks=[1,2]",
        f"out={tmp_path / 'he.json'}",
        "timeout=10",
    )
    he = json.loads((tmp_path / "he.json").read_text())
    assert (
        he["metrics"]["problems"] == 2 and he["metrics"]["pass@1"] == 0.0 and set(he["metrics"]) >= {"pass@2"}
    )
    assert he["sampling"]["temperature"] == 0.4 and he["sampling"]["top_p"] == 0.95
    assert [len(s) for s in he["samples"]] == [3, 3] and all(
        r["result"] != "passed" for s in he["samples"] for r in s
    )

    # BBL from the (tiny) bigbench archive
    assert 0 == eval_in_process(
        ckpt,
        "task=bbl",
        f"bigbench={tiny_bigbench}",
        "tasks=[toy_copy,toy_choice]",
        "min_train_examples=10",
        "limit=3",
        "n=2",
        f"tokenizer={sp_model}",
        "allow_vocab_mismatch=true",  # an NCA model (vocabulary 10,002) with a 500-piece tokenizer: a pipeline test
        f"out={tmp_path / 'bbl.json'}",
        "ks=[1,2]",
    )
    b = json.loads((tmp_path / "bbl.json").read_text())
    assert set(b["per_task"]) == {"toy_copy", "toy_choice"} and "normalised_pass@2" in b["metrics"]

    lines = [json.loads(x) for x in (tiny_run / "eval" / "results.jsonl").read_text().splitlines()]
    assert {x["task"] for x in lines} >= {"ppl", "humaneval", "bbl"} and all(x["step"] == 3 for x in lines)

    # GSM8K from ../shared/data/gsm8k (beside the repository; CI has it): missing data is a visible skip
    from nca_scale.analysis.eval import gsm8k
    from nca_scale.errors import UserError

    try:
        gsm8k.default_dir()
    except UserError as e:
        pytest.skip(f"GSM8K part: {e}")
    assert 0 == eval_in_process(ckpt, "task=gsm8k", f"tokenizer={sp_model}", "allow_vocab_mismatch=true", "limit=2", "n=2", "max_new_tokens=8",
                                f"out={tmp_path / 'gsm.json'}")
    g = json.loads((tmp_path / "gsm.json").read_text())
    assert g["metrics"]["problems"] == 2 and g["sampling"]["temperature"] == 0.6 and "pass@2" in g["metrics"]


def test_eval_errors_are_one_line(tiny_run, tmp_path, capsys):
    from nca_scale.cli import main

    def err(*args) -> str:
        assert main(["eval", *map(str, args)]) == 2
        return capsys.readouterr().err

    assert "needs the model's tokenizer" in err(tiny_run, "task=humaneval")
    assert "choose one of" in err(tiny_run, "task=nope")
    assert "neither a checkpoint" in err(tmp_path, "task=ppl", "data=nca")
    assert "bigbench=" in err(tiny_run, "task=bbl")
    assert "needs data=" in err(tiny_run, "task=ppl")


def test_eval_report_collects_a_sweep(tiny_run, tmp_path):
    from nca_scale.cli import main

    (tiny_run / "eval").mkdir(exist_ok=True)
    with open(tiny_run / "eval" / "results.jsonl", "a") as f:  # two evaluations of the same step: the later counts
        for ppl in (5.0, 4.0):
            f.write(json.dumps({"task": "ppl", "data": "nca", "step": 99, "tokens": 1, "checkpoint": "c",
                                "metrics": {"ppl": ppl, "loss": 1.0}}) + "\n")
    assert main(["eval", "report", str(tiny_run.parent), f"out={tmp_path / 'r.json'}"]) == 0
    rows = [r for r in json.loads((tmp_path / "r.json").read_text()) if r["step"] == 99]
    assert [r["metrics"]["ppl"] for r in rows] == [4.0] and rows[0]["run"] == str(tiny_run)
    assert main(["eval", "report", str(tmp_path / "empty")]) == 2


@pytest.mark.timeout(1200)  # its fixture runs corpus build -> tokenizer -> tokenize -> train: 7 minutes when loaded
def test_text_trained_model_end_to_end(text_run, tmp_path):
    """Perplexity on the run's own val shards is the loss the trainer logged; the tokenizer is found from the
    checkpoint (its text-shard manifest), so no tokenizer= is needed for generation tasks."""
    from nca_scale.cli import main

    logged = [json.loads(x) for x in (text_run / "metrics.jsonl").read_text().splitlines()]
    logged = [m["eval_loss"] for m in logged if "eval_loss" in m][-1]
    meta = json.loads(next((text_run / "checkpoints").glob("step_*/meta.json")).read_text())
    val = meta["config"]["data"]["val_shards"]
    assert main(["eval", str(text_run), "task=ppl", f"data={val}", f"max_sequences={meta['config']['batch_size']}",
                 f"out={tmp_path / 'ppl.json'}"]) == 0
    ppl = json.loads((tmp_path / "ppl.json").read_text())
    assert ppl["metrics"]["loss"] == pytest.approx(logged, rel=1e-6) and ppl["data"]["kind"] == "text shards"
    assert main(["eval", str(text_run), "task=humaneval", "limit=1", "n=2", "max_new_tokens=16", "ks=[1]",
                 f"out={tmp_path / 'he.json'}"]) == 0
    he = json.loads((tmp_path / "he.json").read_text())
    assert he["tokenizer"]["path"].endswith("tokenizer.model") and he["tokenizer"]["eos_id"] == 1
    assert len(he["samples"][0]) == 2 and he["metrics"]["problems"] == 1
