"""From a sweep spec to the list of runs: stage-1 runs (shared by every cell that needs the same checkpoint) and the
stage-2 runs that depend on them, each with its full train command line, recipe values, tokens and FLOPs.

Nothing here reads training data: vocabularies come from the NCA / Dyck / tokenizer configs and the sequence
length from the spec, so `sweep plan` works for a cluster study on a laptop.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from nca_scale import config
from nca_scale.launch import planner
from nca_scale.launch.sweep.spec import (
    ArmSpec,
    DomainSpec,
    SweepSpec,
    corpus_name,
    model_path,
    parse_band,
    size_name,
)
from nca_scale.model.config import flops_per_token, param_counts
from nca_scale.nca.config import NCAConfig
from nca_scale.train import recipe as recipes
from nca_scale.train.config import DataConfig, TrainConfig


@dataclass
class Run:
    name: str
    stage: int
    coords: dict
    out: str
    train_args: list[str]  # CONFIG.yaml key=value ...: what `nca-scale train` runs
    parent: str | None  # the stage-1 run a stage-2 run starts from
    seq_len: int
    vocab_size: int
    params: int
    non_embedding_params: int
    tokens: int  # steps x batch x seq_len
    steps: int
    flops_6nd: float  # 6 x non-embedding parameters x tokens
    flops: float  # exact: flops_per_token (head and attention included) x tokens
    stage1_flops: float | None
    gpu_hours: float
    hyper: dict = field(default_factory=dict)  # lr, beta2, batch_size, micro_batch, warmup
    cfg: TrainConfig | None = field(default=None, repr=False, compare=False)  # train_args resolved (not validated)

    def to_json(self) -> dict:
        """The run's plan.json entry: every field but cfg (train_args say the same, as the job will read them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "cfg"}


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _pairs(d: dict) -> list[tuple[str, str]]:
    return [(k, _value(v)) for k, v in d.items()]


def _partial_config(base: str, over: list[tuple[str, str]]) -> TrainConfig:
    """The train config these overrides give, without validation (text shards may not be built yet)."""
    over = config.renamed_overrides(TrainConfig, over, source="sweep overrides")  # tp with parallel.tp: refused
    return _applied(base, tuple(over))


@functools.cache
def _applied(base: str, over: tuple[tuple[str, str], ...]) -> TrainConfig:
    # memoised by prefix: the runs of a sweep share most of their overrides, and configs are frozen
    if not over:
        return config.from_dict(TrainConfig, config.read_yaml(base), source=base)
    k, v = over[-1]
    return config.set_key(_applied(base, over[:-1]), k, v, source=f"sweep override {k}={v}")


def _tag(key: str, value) -> str:
    return "-" + re.sub(r"[^A-Za-z0-9._]", "", f"{key.split('.')[-1]}{value}")


class Planner:
    def __init__(self, spec: SweepSpec):
        self.spec = spec
        self.dir = spec.sweep_dir
        prof, _ = spec.profile()
        self.world = prof.world if prof.executor == "slurm" else None
        tok = config.read_yaml(spec.data.tokenizer)
        self.text_vocab = int(tok.get("vocab_size", 8000))
        self.runs: dict[str, Run] = {}
        self._data_sections: dict[tuple, tuple] = {}

    # ---- data sections --------------------------------------------------------------------------------
    def text_paths(self, corpus: str, tokenizer: str | None = None) -> dict[str, str]:
        """The tokenizer (trained on `tokenizer`'s corpus, default `corpus`) and the token shards of `corpus`."""
        name, stem = corpus_name(corpus), Path(self.spec.data.tokenizer).stem
        tok = corpus_name(tokenizer) if tokenizer else name
        shards = name if tok == name else f"{name}-by-{tok}"
        base = Path(self.spec.data.dir)
        return {"tokenizer": str(base / f"tok-{tok}-{stem}"),
                "train": str(base / f"{shards}-{stem}-L{self.spec.seq_len}-train"),
                "val": str(base / f"{shards}-{stem}-L{self.spec.seq_len}-val")}

    def _data(self, arm: ArmSpec | None, domain: DomainSpec | None) -> tuple[list[tuple[str, str]], int]:
        """(train overrides selecting the data, its vocabulary size)."""
        key = (arm.stage1_label if arm else None, domain.domain if domain else None)
        if key not in self._data_sections:
            self._data_sections[key] = self._data_section(arm, domain)
        return self._data_sections[key]

    def _data_section(self, arm: ArmSpec | None, domain: DomainSpec | None) -> tuple[list[tuple[str, str]], int]:
        s = self.spec.seq_len
        if domain is not None or arm.arm == "text":
            p = self.text_paths(domain.corpus_source) if domain else self.text_paths(arm.corpus, arm.tokenizer)
            return [("data.source", "text_shards"), ("data.shards", p["train"]), ("data.val_shards", p["val"])], \
                self.text_vocab
        if arm.arm == "nca":
            path = arm.data or self.spec.nca
            lo, hi = parse_band(arm.band)
            nca = config.set_key(config.from_dict(NCAConfig, config.read_yaml(path), source=path), "seq_len", str(s))
            return [("data.source", "nca_stream"), ("data.nca", path), ("data.nca.seq_len", str(s)),
                    ("data.nca.complexity.lo", str(lo)), ("data.nca.complexity.hi", str(hi))], nca.vocab_size
        path = arm.data or self.spec.dyck
        dyck = config.from_dict(DataConfig, config.read_yaml(path), source=path).dyck
        return [("data", path), ("data.source", "dyck"), ("data.dyck.seq_len", str(s))], dyck.vocab_size

    # ---- one run --------------------------------------------------------------------------------------
    def _run(self, name: str, stage: int, coords: dict, size: str, data: tuple, user: list, tokens: int,
             parent: Run | None = None, stage1_flops: float | None = None) -> Run:
        spec = self.spec
        data_over, vocab = data
        out = str(self.dir / "runs" / name)
        head = [("model", str(model_path(size))), *data_over]
        cfg0 = _partial_config(spec.train, head + user)
        model = cfg0.model.with_vocab(cfg0.model.vocab_size or vocab)
        counts = param_counts(model)
        rec = []
        if spec.recipe.rule == "olmo-core":
            nproc = self.world or cfg0.parallel.nproc
            dp = max(1, nproc // (cfg0.parallel.tp * cfg0.parallel.pp))
            h = recipes.hyper(spec.recipe, counts["non_embedding"], spec.seq_len, tokens, cfg0.micro_batch, dp)
            mine = {k for k, _ in user}  # what the spec sets explicitly wins; micro_batch follows the batch
            rec = [(k, v) for k, v in h.overrides() if k not in mine or k == "micro_batch"]
        over = head + user + rec + [("seed", str(coords["seed"])), ("steps", "null"), ("tokens", str(tokens))]
        cfg = _partial_config(spec.train, over)
        steps = -(-tokens // (cfg.batch_size * spec.seq_len))
        if not any(k == "eval_every" for k, _ in user):
            over.append(("eval_every", str(max(1, steps // spec.evals))))
        if self.world:  # on Slurm one rank per task of the profile (as `nca-scale submit` does)
            over.append(("parallel.nproc", str(self.world)))
        over += [("out", out), ("resume", "auto")]  # a restarted or relaunched run continues from its checkpoint
        if parent is not None:
            over.append(("init_from", f"{parent.out}/checkpoints/step_{parent.steps:08d}"))
        cfg = _partial_config(spec.train, over)  # the run's whole config, memoised on the shared prefix
        trained = steps * cfg.batch_size * spec.seq_len
        flops = float(flops_per_token(model, spec.seq_len)["train"] * trained)
        est = spec.estimate
        run = Run(
            name=name, stage=stage, coords=coords, out=out, train_args=[spec.train, *(f"{k}={v}" for k, v in over)],
            parent=parent.name if parent else None, seq_len=spec.seq_len, vocab_size=model.vocab_size,
            params=counts["total"], non_embedding_params=counts["non_embedding"], tokens=trained, steps=steps,
            flops_6nd=6.0 * counts["non_embedding"] * trained, flops=flops, stage1_flops=stage1_flops,
            gpu_hours=flops / (est.mfu * est.peak_flops) / 3600,
            hyper={"lr": cfg.optim.lr, "beta2": cfg.optim.beta2, "batch_size": cfg.batch_size,
                   "micro_batch": cfg.micro_batch, "warmup": cfg.schedule.warmup}, cfg=cfg,
        )
        self.runs[name] = run
        return run

    def _stage1(self, size: str, arm: ArmSpec, seed: int, extra: dict, tag: str) -> Run:
        name = f"s1-{size_name(size)}-{arm.stage1_label}-s{seed}{tag}"
        if name in self.runs:
            return self.runs[name]
        coords = {"size": size_name(size), "arm": arm.arm, "band": arm.band, "stage1_tokens": arm.tokens,
                  "domain": None, "stage2_tokens": None, "seed": seed, "extra": self._extra(arm, extra)}
        user = _pairs(self.spec.overrides) + _pairs(self.spec.stage1) + _pairs(arm.overrides) + list(extra.items())
        return self._run(name, 1, coords, size, self._data(arm, None), user, arm.tokens)

    @staticmethod
    def _extra(arm: ArmSpec, extra: dict) -> dict:
        out = {k: config.yaml.safe_load(v) for k, v in extra.items()}
        if arm.arm == "text":
            out["stage1_corpus"] = corpus_name(arm.corpus)
        return out

    def _stage2(self, size: str, arm: ArmSpec, domain: DomainSpec, budget: tuple[int, str], seed: int, extra: dict,
                tag: str, parent: Run | None = None, matched: tuple[str, Run] | None = None) -> Run:
        t2 = budget[0]
        label = arm.label if matched is None else f"matched-{matched[0]}"
        name = f"s2-{domain.domain}-{size_name(size)}-{label}-d{budget[1]}-s{seed}{tag}"
        ex = self._extra(arm, extra)
        if matched is not None:
            ex["matched_to"] = matched[0]
        transfer = []  # the arm's transfer variant (the stage-1 run is the full-transfer arm's)
        if arm.reinit:
            ex["reinit"] = list(arm.reinit)
            transfer.append(("transfer.reinit", _value(list(arm.reinit))))
        if not arm.reinit_embeddings:
            ex["reinit_embeddings"] = False
            transfer.append(("transfer.reinit_embeddings", "false"))
        coords = {"size": size_name(size), "arm": arm.arm, "band": arm.band if arm.arm == "nca" else None,
                  "stage1_tokens": arm.tokens if parent else None, "domain": domain.domain, "stage2_tokens": t2,
                  "seed": seed, "extra": ex}
        user = (_pairs(self.spec.overrides) + _pairs(self.spec.stage2) + _pairs(domain.overrides) + transfer
                + list(extra.items()))
        data = self._data(None, domain)
        tokens = t2
        if matched is not None:  # the stage-1 FLOPs as extra stage-2 tokens, at this model's FLOPs per token
            cfg0 = _partial_config(self.spec.train, [("model", str(model_path(size))), *data[0], *user])
            model = cfg0.model.with_vocab(cfg0.model.vocab_size or data[1])
            tokens = t2 + round(matched[1].flops / flops_per_token(model, self.spec.seq_len)["train"])
        return self._run(name, 2, coords, size, data, user, tokens, parent=parent,
                         stage1_flops=parent.flops if parent else None)

    def plan(self) -> list[Run]:
        spec = self.spec
        staged: dict[str, ArmSpec] = {}  # one stage-1 run per stage-1 label: transfer variants share it
        for a in spec.arms:
            if a.arm in ("nca", "text", "dyck"):
                staged.setdefault(a.stage1_label, a)
        keys = list(spec.axes)
        for size in spec.sizes:
            n_params = param_counts(_partial_config(spec.train, [("model", str(model_path(size)))]).model.with_vocab(2))[
                "non_embedding"]
            for seed in spec.seeds:
                for values in itertools.product(*(spec.axes[k] for k in keys)):
                    extra = {k: _value(v) for k, v in zip(keys, values)}
                    tag = "".join(_tag(k, v) for k, v in zip(keys, values))
                    s1 = {label: self._stage1(size, a, seed, extra, tag) for label, a in staged.items()}
                    for domain in spec.domains:
                        for b in domain.budgets(n_params):
                            for arm in spec.arms:
                                if not arm.reinit_embeddings and domain not in spec.keeps_embeddings_into(arm):
                                    continue  # kept embeddings mean something only with the same tokenizer
                                if arm.arm == "scratch":
                                    self._stage2(size, arm, domain, b, seed, extra, tag)
                                elif arm.arm == "scratch_matched":
                                    for label in [arm.matched_to] if arm.matched_to else list(s1):
                                        self._stage2(size, arm, domain, b, seed, extra, tag, matched=(label, s1[label]))
                                else:
                                    self._stage2(size, arm, domain, b, seed, extra, tag,
                                                 parent=s1[arm.stage1_label])
        return sorted(self.runs.values(), key=lambda r: r.stage)


def plan(spec: SweepSpec) -> list[Run]:
    return Planner(spec).plan()


def write(spec: SweepSpec, spec_path: str, runs: list[Run]) -> Path:
    """SWEEP_DIR/spec.yaml (the resolved spec) and SWEEP_DIR/plan.json."""
    d = spec.sweep_dir
    d.mkdir(parents=True, exist_ok=True)
    (d / "spec.yaml").write_text(f"# resolved from {spec_path}\n" + config.yaml.safe_dump(asdict(spec), sort_keys=False))
    doc = {"sweep": spec.name, "spec": spec_path, "out": str(d), "estimate": asdict(spec.estimate),
           "recipe": asdict(spec.recipe), "runs": [r.to_json() for r in runs]}
    tmp = d / "plan.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(d / "plan.json")
    return d / "plan.json"


def _g(x: float) -> str:
    return f"{x:.3g}"


def table(spec: SweepSpec, runs: list[Run]) -> str:
    est = spec.estimate
    w = max([len(r.name) for r in runs] + [3])
    head = (f"{'RUN':<{w}} {'ST':>2} {'N(non-emb)':>12} {'PARAMS':>12} {'TOKENS':>12} {'STEPS':>7} {'BATCH':>9} "
            f"{'LR':>9} {'B2':>5} {'WARM':>6} {'6ND':>9} {'FLOPS':>9} {'GPU-H':>9}")
    prof, _ = spec.profile()
    gpus = prof.executor == "slurm" and prof.gpus_per_node > 0  # the planner's layout, memory and step per run
    if gpus:
        head += " " + planner.COLUMNS
    lines = [f"# sweep {spec.name}: {len(runs)} runs ({sum(r.stage == 1 for r in runs)} stage-1, "
             f"{sum(r.stage == 2 for r in runs)} stage-2) in {spec.sweep_dir}; recipe {spec.recipe.rule}"
             + (f" (lr x{spec.recipe.lr_multiplier}, batch x{spec.recipe.batch_multiplier}, warmup <= "
                f"{spec.recipe.max_warmup_fraction:g} of the run)" if spec.recipe.rule == "olmo-core" else ""),
             f"# GPU-hours at {est.mfu:g} MFU of {est.peak_flops:.3g} FLOP/s per GPU ({est.gpu}); FLOPS = exact "
             "training FLOPs (head and attention included), 6ND with N = non-embedding parameters", head]
    for r in runs:
        h = r.hyper
        lines.append(f"{r.name:<{w}} {r.stage:>2} {r.non_embedding_params:>12,} {r.params:>12,} {r.tokens:>12,} "
                     f"{r.steps:>7} {h['batch_size']:>4}x{r.seq_len:<4} {h['lr']:>9.3g} {h['beta2']:>5} "
                     f"{h['warmup']:>6} {_g(r.flops_6nd):>9} {_g(r.flops):>9} {r.gpu_hours:>9.3g}"
                     + (" " + planner.columns(planner.run_estimate(r.cfg, r.vocab_size, r.seq_len, prof.hardware,
                                                                   prof.nodes, prof.gpus_per_node)) if gpus else ""))
    total = sum(r.flops for r in runs)
    lines.append(f"# total: {sum(r.tokens for r in runs):,} tokens, {_g(total)} FLOPs, "
                 f"{sum(r.gpu_hours for r in runs):.3g} GPU-hours")
    if gpus:
        lines.append(f"# LAYOUT tp x pp x dp, micro-batch x accumulation on {prof.nodes} x {prof.gpus_per_node} "
                     f"{prof.hardware.gpu}; GB/GPU and STEP-S (seconds per step), MFU: launch/planner.py (! = does "
                     "not fit: `nca-scale submit` re-plans or refuses it)")
    return "\n".join(lines)
