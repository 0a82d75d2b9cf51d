"""`nca-scale sweep plan`: spec validation (one line, exit 2), the runs of a spec (shared stage 1, names, FLOPs,
recipe values, compute-matched scratch), and every shipped study plans. No training here."""

from __future__ import annotations

import gzip
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from nca_scale import cli
from nca_scale.launch.sweep import plan as sweep_plan
from nca_scale.launch.sweep import spec as sweep_spec
from nca_scale.train.config_versions import FLAT_ALIASES

ROOT = Path(__file__).parents[2]
PLANS = Path(__file__).parent / "plans"  # plan.json of every shipped spec, as planned when it was stored
SPECS = sorted(p.stem for p in (ROOT / "configs/sweeps").glob("*.yaml"))
BASE = {
    "train": "configs/train/cpu-tiny.yaml", "sizes": ["cpu-tiny", "cpu-1m"], "seeds": [0, 1], "seq_len": 128,
    "nca": "configs/nca/tiny.yaml",
    "arms": [{"arm": "scratch"}, {"arm": "nca", "band": "50+", "tokens": 40000},
             {"arm": "scratch_matched", "matched_to": "nca-b50-t40k"}],
    "domains": [{"domain": "web", "tokens": [80000, 160000]}, {"domain": "code", "tokens": [80000]}],
    "data": {"tokenizer": "configs/data/tokenizer-cpu.yaml"},
    "overrides": {"micro_batch": 8},
}


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.chdir(ROOT)


def write(tmp_path: Path, **changes) -> str:
    spec = {**BASE, "out": str(tmp_path / "sweep"), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def plan_runs(path: str) -> dict[str, sweep_plan.Run]:
    return {r.name: r for r in sweep_plan.plan(sweep_spec.load(path))}


@pytest.mark.parametrize("changes,message", [
    ({"arms": [{"arm": "nca", "tokens": 10}]}, "arm nca: set band"),
    ({"arms": [{"arm": "nca", "band": "fifty", "tokens": 10}]}, "band 'fifty'"),
    ({"arms": [{"arm": "nca", "band": "60-40", "tokens": 10}]}, "LO < HI"),
    ({"arms": [{"arm": "dyck"}]}, "arm dyck: set tokens"),
    ({"arms": [{"arm": "scratch", "tokens": 5}]}, "has no stage 1"),
    ({"arms": [{"arm": "scratch"}, {"arm": "scratch_matched"}]}, "needs an arm with a stage 1"),
    ({"arms": [{"arm": "nca", "band": "50+", "tokens": 9}, {"arm": "scratch_matched", "matched_to": "dyck-t9"}]},
     "matched_to 'dyck-t9'"),
    ({"arms": [{"arm": "random"}]}, "key 'arms[0].arm' must be one of"),
    ({"sizes": ["cpu-huge"]}, "no model preset"),
    ({"domains": [{"domain": "web"}]}, "domain web: give tokens"),
    ({"domains": [{"domain": "web", "tokens": [1]}, {"domain": "web", "tokens": [2]}]}, "each domain may appear once"),
    ({"axes": {"seed": [1, 2]}}, "axes: seed is set by the sweep"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"recipe": {"rule": "chinchilla"}}, "key 'recipe.rule' must be one of"),
    ({"arms": [{"arm": "nca", "band": "50+", "tokens": 9, "reinit": ["ln"]}]}, "list each of attn, mlp, norm"),
    ({"arms": [{"arm": "nca", "band": "50+", "tokens": 9, "reinit": ["attn", "attn"]}]}, "at most once"),
    ({"arms": [{"arm": "scratch", "reinit": ["attn"]}]}, "arm scratch has no stage 1"),
    ({"arms": [{"arm": "nca", "band": "50+", "tokens": 9, "reinit_embeddings": False}]}, "needs a text arm"),
    ({"arms": [{"arm": "text", "corpus": "math", "tokens": 9, "reinit_embeddings": False}]},
     "needs tokenizer: set to the corpus of a stage-2 domain"),
    ({"arms": [{"arm": "dyck", "tokens": 9, "tokenizer": "web"}]}, "tokenizer: applies to the text arm only"),
    ({"arms": [{"arm": "nca", "band": "50+", "tokens": 9},
               {"arm": "nca", "band": "50+", "tokens": 9, "reinit": ["mlp"], "overrides": {"optim.lr": 0.1}}]},
     "share one stage-1 run"),
])
def test_bad_specs_are_one_line_errors(tmp_path, capsys, changes, message):
    rc = cli.main(["sweep", "plan", write(tmp_path, **changes)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "sweep").exists()  # nothing half-written


def test_plan_shares_stage1_and_names_encode_coordinates(tmp_path):
    runs = plan_runs(write(tmp_path))
    s1 = [r for r in runs.values() if r.stage == 1]
    s2 = [r for r in runs.values() if r.stage == 2]
    # one stage-1 run per (size, seed) for the one NCA arm, feeding both domains and both web budgets
    assert sorted(r.name for r in s1) == sorted(f"s1-{z}-nca-b50-t40k-s{s}" for z in ("cpu-tiny", "cpu-1m")
                                                for s in (0, 1))
    assert len(s2) == 2 * 2 * 3 * 3  # sizes x seeds x (web 80k, web 160k, code 80k) x (scratch, nca, matched)
    child = runs["s2-code-cpu-1m-nca-b50-t40k-d80k-s1"]
    parent = runs[child.parent]
    assert parent.name == "s1-cpu-1m-nca-b50-t40k-s1"
    assert sum(r.parent == parent.name for r in s2) == 3
    assert f"init_from={parent.out}/checkpoints/step_{parent.steps:08d}" in child.train_args
    assert child.coords == {"size": "cpu-1m", "arm": "nca", "band": "50+", "stage1_tokens": 40000, "domain": "code",
                            "stage2_tokens": 80000, "seed": 1, "extra": {}}
    assert child.stage1_flops == parent.flops
    scratch = runs["s2-web-cpu-tiny-scratch-d160k-s0"]
    assert scratch.parent is None and scratch.coords["arm"] == "scratch" and scratch.coords["stage1_tokens"] is None
    assert not any(a.startswith("init_from=") for a in scratch.train_args)
    assert "seed=0" in scratch.train_args and "data.source=text_shards" in scratch.train_args
    # the typed config the run holds says what its train_args say
    assert (scratch.cfg.seed, scratch.cfg.data.source, scratch.cfg.out, scratch.cfg.init_from) == (
        0, "text_shards", scratch.out, None)
    assert child.cfg.init_from == f"{parent.out}/checkpoints/step_{parent.steps:08d}"
    assert parent.cfg.data.source == "nca_stream" and parent.cfg.data.nca.complexity.lo == 0.5
    assert "cfg" not in child.to_json() and child.to_json()["train_args"] == child.train_args


# Values derived by hand (not by the code under test) for three runs of BASE. Sizes (configs/model):
#   cpu-tiny: 2 layers, d 64, 4 heads of 16, SwiGLU 256. A layer: q,k,v,o 4*64*64 = 16,384 + gate/up/down
#     3*64*256 = 49,152 + 2 norms 128 = 65,664; N (non-embedding) = 2*65,664 + 64 (final norm) = 131,392.
#   cpu-1m: 4 layers, d 128, 4 heads of 32, SwiGLU 512. A layer: 65,536 + 196,608 + 256 = 262,400;
#     N = 4*262,400 + 128 = 1,049,728.
# Train FLOPs per token (PaLM appendix B): 6 x matmul weights (layers without norms + head V*d)
#   + 12 x layers x heads x head_dim x seq_len. At seq 128:
#   cpu-tiny, V 1000 (cpu tokenizer): 6*(2*65,536 + 64,000) + 12*2*4*16*128 = 1,170,432 + 196,608 = 1,367,040
#   cpu-1m, V 10,002 (NCA): 6*(4*262,144 + 1,280,256) + 12*4*4*32*128 = 13,972,992 + 786,432 = 14,759,424
#   cpu-1m, V 1000: 6*(1,048,576 + 128,000) + 786,432 = 7,845,888
# Recipe (OLMo-core, Porian et al.: lr 0.0047 (N/108M)^(-1/3), 2048*160 (N/108M)^(2/3) tokens per step):
#   cpu-tiny: (N/108M)^(1/3) = 0.106752 -> lr 0.044027; 327,680 * 0.011396 / 128 = 29.17 sequences -> the
#     nearest multiple of micro_batch 8 is 32 (4,096 tokens per step, beta2 0.99 below 524,288).
#   cpu-1m: (N/108M)^(1/3) = 0.213412 -> lr 0.022023; 327,680 * 0.045545 / 128 = 116.6 -> 120 sequences
#     (15,360 tokens per step).
# GPU-hours: FLOPs / (MFU 0.4 x H100 dense bf16 989e12 FLOP/s) / 3600.
HAND = {
    # 80,000 tokens / 4,096 = 19.5 -> 20 steps; warmup min(ceil(N / 4,096) = 33, 10% of 20 = 2)
    "s2-web-cpu-tiny-scratch-d80k-s0": dict(
        steps=20, tokens=81_920, lr=0.044027, batch_size=32, warmup=2, vocab=1000, flops=1_367_040 * 81_920,
        flops_6nd=6 * 131_392 * 81_920, gpu_hours=1_367_040 * 81_920 / (0.4 * 989e12) / 3600),
    # 40,000 NCA tokens / 15,360 = 2.6 -> 3 steps; warmup min(69, 10% of 3 -> 0)
    "s1-cpu-1m-nca-b50-t40k-s1": dict(
        steps=3, tokens=46_080, lr=0.022023, batch_size=120, warmup=0, vocab=10_002, flops=680_114_257_920,
        flops_6nd=6 * 1_049_728 * 46_080, gpu_hours=680_114_257_920 / (0.4 * 989e12) / 3600),
    # compute-matched: 80,000 web tokens + the stage-1 run's 680,114,257,920 FLOPs as web tokens at
    # 7,845,888 FLOPs each (86,685.4) = 166,685 tokens -> 10.9 -> 11 steps of 15,360; warmup min(69, 1)
    "s2-web-cpu-1m-matched-nca-b50-t40k-d80k-s1": dict(
        steps=11, tokens=168_960, lr=0.022023, batch_size=120, warmup=1, vocab=1000, flops=7_845_888 * 168_960,
        flops_6nd=6 * 1_049_728 * 168_960, gpu_hours=7_845_888 * 168_960 / (0.4 * 989e12) / 3600),
}


def test_flops_tokens_and_recipe_values(tmp_path):
    runs = plan_runs(write(tmp_path))
    for name, want in HAND.items():
        r = runs[name]
        assert (r.steps, r.tokens, r.vocab_size) == (want["steps"], want["tokens"], want["vocab"]), name
        assert r.hyper == {"lr": pytest.approx(want["lr"], rel=2e-5), "beta2": 0.99, "batch_size": want["batch_size"],
                           "micro_batch": 8, "warmup": want["warmup"]}, name
        assert (r.flops, r.flops_6nd) == (want["flops"], want["flops_6nd"]), name
        assert r.gpu_hours == pytest.approx(want["gpu_hours"], rel=1e-12), name
        assert f"eval_every={max(1, want['steps'] // 10)}" in r.train_args
    assert runs["s2-web-cpu-1m-matched-nca-b50-t40k-d80k-s1"].coords["extra"] == {"matched_to": "nca-b50-t40k"}
    for r in runs.values():  # every run: whole steps of the recipe's batch, covering its budget
        budget = r.coords["stage1_tokens"] if r.stage == 1 else r.coords["stage2_tokens"]
        assert r.tokens == r.steps * r.hyper["batch_size"] * 128 and r.tokens >= budget
        if r.coords["arm"] != "scratch_matched":
            assert r.tokens < budget + r.hyper["batch_size"] * 128


def test_axes_and_tokens_per_param(tmp_path):
    path = write(tmp_path, sizes=["cpu-tiny"], seeds=[0], axes={"optim.weight_decay": [0.0, 0.1]},
                 domains=[{"domain": "web", "tokens_per_param": [2]}], arms=[{"arm": "nca", "band": "30-40",
                                                                              "tokens": 5000}])
    runs = plan_runs(path)
    assert sorted(runs) == sorted([f"s1-cpu-tiny-nca-b30-40-t5k-s0-weight_decay{v}" for v in ("0.0", "0.1")]
                                  + [f"s2-web-cpu-tiny-nca-b30-40-t5k-d2N-s0-weight_decay{v}" for v in ("0.0", "0.1")])
    r = runs["s2-web-cpu-tiny-nca-b30-40-t5k-d2N-s0-weight_decay0.1"]
    assert r.parent == "s1-cpu-tiny-nca-b30-40-t5k-s0-weight_decay0.1"
    assert r.coords["extra"] == {"optim.weight_decay": 0.1} and r.coords["stage2_tokens"] == 2 * 131_392
    assert "optim.weight_decay=0.1" in r.train_args
    s1 = runs[r.parent]
    assert "data.nca.complexity.lo=0.3" in s1.train_args and "data.nca.complexity.hi=0.4" in s1.train_args


def test_plan_command_writes_plan_json(tmp_path, capsys):
    path = write(tmp_path)
    assert cli.main(["sweep", "plan", path, "seeds=[3]"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "sweep" / "plan.json").read_text())
    assert len(doc["runs"]) == 2 + 2 * 3 * 3 and {r["coords"]["seed"] for r in doc["runs"]} == {3}
    for r in doc["runs"]:
        assert r["name"] in out
    assert (tmp_path / "sweep" / "spec.yaml").is_file()


def test_transfer_variants_share_the_stage1_run_and_set_the_transfer(tmp_path):
    """The release's re-initialisation ablation (paper.md §3.3: `--reinit_modules embed attn|mlp|ln`) and the
    kept-embeddings variant of a text arm are arms: one stage-1 checkpoint, stage-2 runs that differ only in
    `transfer.*`; kept embeddings go only into the domain whose tokenizer the text arm was tokenized with."""
    arms = [{"arm": "scratch"}, {"arm": "nca", "band": "50+", "tokens": 40000},
            {"arm": "nca", "band": "50+", "tokens": 40000, "reinit": ["attn"]},
            {"arm": "nca", "band": "50+", "tokens": 40000, "reinit": ["mlp", "norm"]},
            {"arm": "text", "corpus": "math", "tokens": 40000, "tokenizer": "web"},
            {"arm": "text", "corpus": "math", "tokens": 40000, "tokenizer": "web", "reinit_embeddings": False},
            {"arm": "scratch_matched", "matched_to": "nca-b50-t40k"}]
    runs = plan_runs(write(tmp_path, arms=arms, sizes=["cpu-tiny"], seeds=[0],
                           domains=[{"domain": "web", "tokens": [80000]}, {"domain": "code", "tokens": [80000]}]))
    assert sorted(n for n, r in runs.items() if r.stage == 1) == ["s1-cpu-tiny-nca-b50-t40k-s0",
                                                                  "s1-cpu-tiny-text-math-t40k-tokweb-s0"]
    s2 = {n: r for n, r in runs.items() if r.stage == 2}
    variants = ("scratch", "nca-b50-t40k", "nca-b50-t40k-reinit-attn", "nca-b50-t40k-reinit-mlp-reinit-norm",
                "text-math-t40k-tokweb", "matched-nca-b50-t40k")
    assert sorted(s2) == sorted([f"s2-{d}-cpu-tiny-{a}-d80k-s0" for a in variants for d in ("web", "code")]
                                + ["s2-web-cpu-tiny-text-math-t40k-tokweb-keepemb-d80k-s0"])
    full, attn = s2["s2-web-cpu-tiny-nca-b50-t40k-d80k-s0"], s2["s2-web-cpu-tiny-nca-b50-t40k-reinit-attn-d80k-s0"]
    both = s2["s2-web-cpu-tiny-nca-b50-t40k-reinit-mlp-reinit-norm-d80k-s0"]
    text, keep = s2["s2-web-cpu-tiny-text-math-t40k-tokweb-d80k-s0"], s2[
        "s2-web-cpu-tiny-text-math-t40k-tokweb-keepemb-d80k-s0"]
    assert full.parent == attn.parent == both.parent == "s1-cpu-tiny-nca-b50-t40k-s0"
    assert text.parent == keep.parent == "s1-cpu-tiny-text-math-t40k-tokweb-s0"
    assert full.cfg.transfer.reinit == [] and full.cfg.transfer.reinit_embeddings
    assert attn.cfg.transfer.reinit == ["attn"] and both.cfg.transfer.reinit == ["mlp", "norm"]
    assert keep.cfg.transfer.reinit == [] and keep.cfg.transfer.reinit_embeddings is False
    assert "reinit" not in full.coords["extra"] and attn.coords["extra"]["reinit"] == ["attn"]
    assert keep.coords["extra"] == {"stage1_corpus": "math", "reinit_embeddings": False}
    # the text arm's corpus is tokenized with the web domain's tokenizer (so kept embeddings mean the same ids)
    s1 = runs["s1-cpu-tiny-text-math-t40k-tokweb-s0"]
    assert "data.shards=runs/data/math-by-web-tokenizer-cpu-L128-train" in s1.train_args
    assert sweep_plan.Planner(sweep_spec.load(str(tmp_path / "spec.yaml"))).text_paths("math", "web")[
        "tokenizer"] == "runs/data/tok-web-tokenizer-cpu"
    # apart from the transfer keys the variants run exactly what the full transfer runs
    strip = [a for a in attn.train_args if not a.startswith("transfer.") and not a.startswith("out=")]
    assert strip == [a for a in full.train_args if not a.startswith("out=")]
    assert (attn.tokens, attn.steps, attn.hyper) == (full.tokens, full.steps, full.hyper)


def test_text_arm_with_a_domains_tokenizer_is_prepared_with_it(tmp_path):
    """`tokenizer: web` on a math text arm: one tokenizer (web's), and the math corpus packed with it."""
    from nca_scale.launch.sweep import data as sweep_data

    data = tmp_path / "data"
    path = write(tmp_path, sizes=["cpu-tiny"], seeds=[0], domains=[{"domain": "web", "tokens": [4000]}],
                 arms=[{"arm": "scratch"}, {"arm": "text", "corpus": "math", "tokens": 4000, "tokenizer": "web",
                                            "reinit_embeddings": False}],
                 data={"dir": str(data), "tokenizer": "configs/data/tokenizer-cpu.yaml", "train_tokens": 4000,
                       "val_tokens": 2000})
    spec = sweep_spec.load(path)
    planner = sweep_plan.Planner(spec)
    planner.plan()
    sweep_data.prepare_data(spec, planner)
    assert sorted(p.name for p in data.iterdir()) == [
        "math-by-web-tokenizer-cpu-L128-train", "math-by-web-tokenizer-cpu-L128-val", "tok-web-tokenizer-cpu",
        "web-tokenizer-cpu-L128-train", "web-tokenizer-cpu-L128-val"]


@pytest.mark.parametrize("spec", sorted(p.name for p in (ROOT / "configs/sweeps").glob("*.yaml")))
def test_every_shipped_study_plans(spec, capsys):
    s = sweep_spec.load(f"configs/sweeps/{spec}")
    runs = sweep_plan.plan(s)
    assert runs and all(r.flops > 0 and r.gpu_hours > 0 for r in runs)
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    for r in runs:
        if r.parent:
            assert r.parent in names
    text = sweep_plan.table(s, runs)
    assert f"{len(runs)} runs" in text and not math.isnan(sum(r.flops for r in runs))


# ---- the shipped specs plan to the same runs as the stored plans ---------------------------------------------
def planned_json(spec: str, tmp_path: Path) -> dict:
    """SWEEP_DIR/plan.json of `nca-scale sweep plan configs/sweeps/SPEC.yaml`, with its tmp SWEEP_DIR written as
    the placeholder SWEEP_DIR (the only machine-dependent part of it)."""
    out = tmp_path / spec
    assert cli.main(["sweep", "plan", f"configs/sweeps/{spec}.yaml", f"out={out}", "format=json"]) == 0
    return json.loads((out / "plan.json").read_text().replace(str(out), "SWEEP_DIR"))


def stored(spec: str) -> dict:
    return json.loads(gzip.decompress((PLANS / f"{spec}.json.gz").read_bytes()))


def store(doc: dict, path: Path) -> None:
    """One run per line (`zcat FILE` reads it), gzipped: the four plans are 820 kB as text, 22 kB gzipped."""
    head = json.dumps({k: v for k, v in doc.items() if k != "runs"})[:-1]
    runs = ",\n".join(json.dumps(r) for r in doc["runs"])
    path.write_bytes(gzip.compress(f'{head}, "runs": [\n{runs}\n]}}\n'.encode(), mtime=0))


def sectioned_arg(arg: str) -> str:
    """`tp=2` -> `parallel.tp=2`: a train argument in this release's spelling (the flat names are its aliases)."""
    key, eq, value = arg.partition("=")
    return f"{FLAT_ALIASES.get(key, key)}{eq}{value}"


@pytest.mark.parametrize("spec", SPECS)
def test_shipped_specs_plan_as_stored(spec, tmp_path, capsys):
    """A redesign of the launch code must not change what a study runs. After an intended change of the plans,
    rewrite the stored ones with `python tests/launch/test_sweep_plan.py` and say why in the commit."""
    now, before = planned_json(spec, tmp_path), stored(spec)
    for run in before["runs"]:  # stored before the sectioned keys: the same runs, with the flat key spellings
        run["train_args"] = [sectioned_arg(a) for a in run["train_args"]]
    assert {k: v for k, v in now.items() if k != "runs"} == {k: v for k, v in before.items() if k != "runs"}
    assert [r["name"] for r in now["runs"]] == [r["name"] for r in before["runs"]], "the runs (or their order) differ"
    for new, old in zip(now["runs"], before["runs"]):
        changed = {k: {"stored": old.get(k), "now": new.get(k)} for k in old.keys() | new.keys()
                   if old.get(k) != new.get(k)}
        assert not changed, f"run {new['name']} plans differently: {json.dumps(changed, indent=1)}"


if __name__ == "__main__":  # rewrite the stored plans (only for an intended change of the plans)
    import os
    import tempfile

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sys.argv[1:] or SPECS:
            store(planned_json(name, Path(tmp)), PLANS / f"{name}.json.gz")
            print(f"wrote {PLANS / name}.json.gz")
