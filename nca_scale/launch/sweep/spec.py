"""The sweep spec: a YAML file (configs/sweeps/) that names the axes of a study. See docs/sweeps.md.

Axes: model sizes (presets of configs/model/ or paths), stage-1 arms (scratch; NCA with a complexity band and a
token budget; a text corpus; Dyck; the compute-matched scratch arm), stage-2 domains with their token budgets,
seeds, and any train config key (`axes`). `load()` returns a validated SweepSpec or raises one UserError line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nca_scale import config
from nca_scale.errors import UserError
from nca_scale.train.recipe import RecipeConfig

ARMS = ("scratch", "nca", "text", "dyck", "scratch_matched")
DOMAINS = ("web", "math", "code")
TRANSFER_MODULES = ("attn", "mlp", "norm")  # as transfer.reinit names them (nca_scale/train/transfer.py)
_BAND = re.compile(r"(\d+)(?:\+|-(\d+))")


def parse_band(band: str) -> tuple[float, float]:
    """'50+' -> (0.5, 1.0), '30-40' -> (0.3, 0.4): the gzip complexity band in percent (paper.md §5.5)."""
    m = _BAND.fullmatch(band.strip())
    if not m:
        raise UserError(f"band {band!r}: write a gzip band in percent as LO-HI (e.g. 30-40) or LO+ (e.g. 50+)")
    lo, hi = int(m.group(1)), int(m.group(2)) if m.group(2) else 100
    if not 0 <= lo < hi <= 100:
        raise UserError(f"band {band!r}: need 0 <= LO < HI <= 100")
    return lo / 100, hi / 100


@dataclass(frozen=True)
class ArmSpec:
    arm: Literal["scratch", "nca", "text", "dyck", "scratch_matched"]
    band: str | None = None  # nca: gzip band in percent, "50+" or "30-40"
    tokens: int | None = None  # stage-1 token budget (nca, text, dyck)
    corpus: str | None = None  # text: the corpus pre-pre-trained on (an embedded name or configs/corpus/*.yaml)
    data: str | None = None  # nca: NCA config (default: the spec's `nca`); dyck: a Dyck config (default: `dyck`)
    matched_to: str | None = None  # scratch_matched: the label of the arm it is compute-matched to; None = each
    overrides: dict[str, Any] = field(default_factory=dict)  # stage-1 train keys for this arm
    # the transfer (nca, text, dyck): modules re-initialised before stage 2 on top of the embeddings (the release's
    # attn|mlp|ln ablation: attn, mlp, norm), and whether the embeddings and head start new (the default) or are kept
    reinit: list[str] = field(default_factory=list)
    reinit_embeddings: bool = True  # false: only into domains that share the stage-1 tokenizer (see `tokenizer`)
    tokenizer: str | None = None  # text: the corpus whose tokenizer tokenizes this arm's corpus (default: its own)

    @property
    def label(self) -> str:
        """The arm's part of a run name: scratch, nca-b50-t1M, text-web-t1M, dyck-t1M, matched-nca-b50-t1M; a
        transfer variant appends -reinit-attn[-mlp...] and/or -keepemb to its stage-1 label."""
        variant = "".join(f"-reinit-{m}" for m in self.reinit) + ("" if self.reinit_embeddings else "-keepemb")
        return self.stage1_label + variant

    @property
    def stage1_label(self) -> str:
        """The label of the stage-1 run: arms that differ only in their transfer share it."""
        if self.arm == "scratch":
            return "scratch"
        if self.arm == "scratch_matched":
            return f"matched-{self.matched_to}"
        t = f"t{short_count(self.tokens)}"
        if self.arm == "nca":
            return f"nca-b{self.band.replace('+', '')}-{t}"
        if self.arm == "text":
            tok = f"-tok{corpus_name(self.tokenizer)}" if self.tokenizer else ""
            return f"text-{corpus_name(self.corpus)}-{t}{tok}"
        return f"dyck-{t}"

    def validate(self) -> None:
        staged = self.arm in ("nca", "text", "dyck")
        if staged and (self.tokens is None or self.tokens < 1):
            raise UserError(f"arm {self.arm}: set tokens: N (the stage-1 token budget, >= 1)")
        if not staged and self.tokens is not None:
            raise UserError(f"arm {self.arm} has no stage 1; drop tokens: {self.tokens}")
        if self.arm == "nca":
            if not self.band:
                raise UserError("arm nca: set band: e.g. '50+' (gzip 50-100%) or '30-40'")
            parse_band(self.band)
        elif self.band is not None:
            raise UserError(f"band: applies to the nca arm only (arm {self.arm})")
        if self.arm == "text" and not self.corpus:
            raise UserError("arm text: set corpus: (web, math, code or a configs/corpus/*.yaml)")
        if self.arm != "text" and self.corpus is not None:
            raise UserError(f"corpus: applies to the text arm only (arm {self.arm}); stage-2 corpora are in domains:")
        if self.arm != "scratch_matched" and self.matched_to is not None:
            raise UserError(f"matched_to: applies to arm scratch_matched only (arm {self.arm})")
        if self.arm != "text" and self.tokenizer is not None:
            raise UserError(f"tokenizer: applies to the text arm only (arm {self.arm})")
        if not self.reinit_embeddings and self.arm != "text":
            raise UserError(f"reinit_embeddings: false keeps the stage-1 embeddings, so it needs a text arm with "
                            f"the stage-2 domain's tokenizer (tokenizer: DOMAIN); arm {self.arm} has its own vocabulary")
        if not staged and (self.reinit or not self.reinit_embeddings):
            raise UserError(f"reinit:/reinit_embeddings: describe a transfer; arm {self.arm} has no stage 1")
        bad = [m for m in self.reinit if m not in TRANSFER_MODULES]
        if bad or len(set(self.reinit)) != len(self.reinit):
            raise UserError(f"arm {self.arm}: reinit: {self.reinit}: list each of {', '.join(TRANSFER_MODULES)} at "
                            "most once (the release's ln is norm)")


@dataclass(frozen=True)
class DomainSpec:
    domain: Literal["web", "math", "code"]
    tokens: list[int] = field(default_factory=list)  # stage-2 token budgets ...
    tokens_per_param: list[float] = field(default_factory=list)  # ... and/or budgets of k x non-embedding params
    corpus: str | None = None  # default: the embedded corpus of that name
    overrides: dict[str, Any] = field(default_factory=dict)  # stage-2 train keys for this domain

    @property
    def corpus_source(self) -> str:
        return self.corpus or self.domain

    def budgets(self, n_params: int) -> list[tuple[int, str]]:
        """(stage-2 tokens, name tag) for a model of n_params non-embedding parameters."""
        fixed = [(t, short_count(t)) for t in self.tokens]
        return fixed + [(round(k * n_params), f"{k:g}N") for k in self.tokens_per_param]

    def validate(self) -> None:
        if not (self.tokens or self.tokens_per_param):
            raise UserError(f"domain {self.domain}: give tokens: [N, ...] and/or tokens_per_param: [k, ...]")
        if any(t < 1 for t in self.tokens) or any(k <= 0 for k in self.tokens_per_param):
            raise UserError(f"domain {self.domain}: token budgets must be >= 1 and tokens_per_param > 0")


@dataclass(frozen=True)
class DataPrep:
    """How the text of stage-2 domains and text arms is prepared (corpus build, tokenizer, tokenize)."""

    dir: str = "runs/data"  # tokenizers and text shards; corpora go to the corpus cache (docs/corpora.md)
    tokenizer: str = "configs/data/tokenizer-8k.yaml"  # one tokenizer per corpus, trained on its train split
    train_tokens: int | None = None  # cap on the packed train split (None = all of it; set >= the largest budget)
    val_tokens: int | None = None  # cap on the packed validation split (None = all of it)


@dataclass(frozen=True)
class Estimate:
    """For the GPU-hour column of `sweep plan`: hours = exact FLOPs / (mfu x peak_flops) / 3600."""

    mfu: float = 0.4
    peak_flops: float = 989e12  # H100/H200 dense bf16 (nca_scale/train/speed.py)
    gpu: str = "H100"


@dataclass(frozen=True)
class SweepSpec:
    train: str  # the base train config of every run
    sizes: list[str]
    arms: list[ArmSpec]
    domains: list[DomainSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    name: str | None = None  # default: the spec file's stem
    out: str | None = None  # default: runs/sweeps/NAME
    seq_len: int = 1024  # every run's sequence length (NCA, Dyck, text)
    nca: str = "configs/nca/paper.yaml"  # base NCA config of nca arms (band sets complexity.lo/hi)
    dyck: str = "configs/data/dyck-paper.yaml"  # base data config of dyck arms
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    evals: int = 10  # evaluations per run (eval_every = steps // evals)
    overrides: dict[str, Any] = field(default_factory=dict)  # train keys of every run
    stage1: dict[str, Any] = field(default_factory=dict)  # train keys of every stage-1 run
    stage2: dict[str, Any] = field(default_factory=dict)  # train keys of every stage-2 run
    axes: dict[str, list[Any]] = field(default_factory=dict)  # any train key: values (cartesian, both stages)
    data: DataPrep = field(default_factory=DataPrep)
    cluster: str | None = None  # profile (configs/cluster/); None = this machine, submitit's local executor
    cluster_keys: dict[str, Any] = field(default_factory=dict)  # profile overrides, e.g. {nodes: 1, time: "04:00:00"}
    parallel: int = 2  # local executor: runs at a time
    estimate: Estimate = field(default_factory=Estimate)

    def profile(self):
        """(cluster profile, its name)."""
        from nca_scale.launch import profile as profiles

        return profiles.load(self.cluster, [(k, str(v)) for k, v in self.cluster_keys.items()])

    @property
    def sweep_dir(self) -> Path:
        return Path(self.out or f"runs/sweeps/{self.name}")

    def keeps_embeddings_into(self, arm: ArmSpec) -> list[DomainSpec]:
        """The domains an arm with reinit_embeddings: false transfers to: those whose corpus is its tokenizer's."""
        return [d for d in self.domains if arm.tokenizer and corpus_name(d.corpus_source) == corpus_name(arm.tokenizer)]

    def validate(self) -> None:
        if not self.sizes:
            raise UserError("sizes: list at least one model preset (configs/model/NAME.yaml) or path")
        for s in self.sizes:
            model_path(s)
        if not self.arms or not self.domains or not self.seeds:
            raise UserError("arms:, domains: and seeds: must each list at least one entry")
        for a in self.arms:
            a.validate()
        for d in self.domains:
            d.validate()
        labels = [a.label for a in self.arms if a.arm != "scratch_matched"]
        if len(set(labels)) != len(labels):
            raise UserError(f"arms: two arms have the same label ({', '.join(labels)})")
        staged = [a.stage1_label for a in self.arms if a.arm in ("nca", "text", "dyck")]
        for a in self.arms:
            same = [b for b in self.arms if b.arm == a.arm and b.stage1_label == a.stage1_label]
            if any((b.data, b.overrides, b.corpus) != (a.data, a.overrides, a.corpus) for b in same):
                raise UserError(f"arms {a.stage1_label}: transfer variants share one stage-1 run; give them the "
                                "same data:, corpus: and overrides:")
            if a.arm == "scratch_matched" and a.matched_to is not None and a.matched_to not in staged:
                raise UserError(f"scratch_matched: matched_to {a.matched_to!r} is not an arm with a stage 1 "
                                f"(labels: {', '.join(staged) or 'none'})")
        if any(a.arm == "scratch_matched" for a in self.arms) and not staged:
            raise UserError("arm scratch_matched needs an arm with a stage 1 (nca, text or dyck) to match")
        for a in self.arms:
            if not a.reinit_embeddings and not self.keeps_embeddings_into(a):
                raise UserError(f"arm {a.label}: reinit_embeddings: false needs tokenizer: set to the corpus of a "
                                f"stage-2 domain ({', '.join(d.corpus_source for d in self.domains)})")
        if len({d.domain for d in self.domains}) != len(self.domains):
            raise UserError("domains: each domain may appear once (list several token budgets in its tokens:)")
        if len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"seeds: {self.seeds} has duplicates")
        for key, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise UserError(f"axes: {key}: give a non-empty list of values")
            if key.split(".")[0] in ("out", "init_from", "resume", "seed", "model", "tokens", "steps"):
                raise UserError(f"axes: {key} is set by the sweep itself (use sizes:, seeds:, arms:, domains:)")
        for name in ("seq_len", "evals", "parallel"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: {getattr(self, name)} must be >= 1")
        if not 0 < self.estimate.mfu <= 1:
            raise UserError(f"estimate.mfu={self.estimate.mfu} must be in (0, 1]")
        self.recipe.validate()
        for path in (self.train, self.nca, self.dyck, self.data.tokenizer):
            if not Path(path).is_file():
                raise UserError(f"{path} does not exist (paths in a sweep spec are relative to the repository root)")


def model_path(size: str) -> Path:
    p = Path(size) if size.endswith((".yaml", ".yml")) else Path("configs/model") / f"{size}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in Path("configs/model").glob("*.yaml")))
        raise UserError(f"size {size!r}: no model preset {p} (known: {known}), or give a path to a model YAML")
    return p


def size_name(size: str) -> str:
    """The size's part of a run name: the preset name, or a model YAML's file name without .yaml."""
    return re.sub(r"\.ya?ml$", "", Path(size).name)


def corpus_name(corpus: str) -> str:
    """The name a corpus is built under: the embedded name, or the `name:` of a corpus YAML."""
    if corpus.endswith((".yaml", ".yml")):
        return str(config.read_yaml(corpus).get("name") or Path(corpus).stem)
    return corpus


def short_count(n: int) -> str:
    """1000000 -> 1M, 400000 -> 400k, 163840000 -> 163840k, 1500 -> 1500 (exact, so names stay unique)."""
    for div, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


def load(path: str, overrides: list[tuple[str, str]] = ()) -> SweepSpec:
    spec = config.load(SweepSpec, path, overrides)
    if spec.name is None:
        from dataclasses import replace

        spec = replace(spec, name=Path(path).stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", spec.name):
        raise UserError(f"name: {spec.name!r} may hold only letters, digits, '.', '_' and '-'")
    return spec
