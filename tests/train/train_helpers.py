"""Helpers for the training tests: run `nca-scale train` in a fresh process (each run owns its process group) and read its outputs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).parents[2]
CLI = Path(sys.executable).parent / "nca-scale"
# tiny 4-layer model (so PP=2 x VPP=2 divides it), small rule banks (bank building dominates start-up), no wandb, no progress bar
FAST = ["model.n_layers=4", "data.nca.bank.size=8", "data.nca.bank.val_size=4", "wandb=disabled", "progress=false", "eval_every=0"]


def train(out: Path, *overrides: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")  # one thread: bitwise-reproducible sums
    cmd = [str(CLI), "train", "configs/train/cpu-tiny.yaml", f"out={out}", *FAST, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [m["loss"] for m in metrics(out) if "loss" in m]


def assert_close(a: list[float], b: list[float], rel: float = 1e-4) -> None:
    assert len(a) == len(b), (a, b)
    for x, y in zip(a, b):
        assert abs(x - y) <= rel * abs(y), (a, b)


def state(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a torch-backend checkpoint (DCP `dcp/`, or an earlier version's `state.pt`)."""
    from nca_scale.train.transfer import read_logical

    return read_logical(path, model_config(path))


def grad_norms(out: Path) -> list[float]:
    return [m["grad_norm"] for m in metrics(out) if "grad_norm" in m]


def model_config(ckpt: Path):
    """The resolved ModelConfig a checkpoint was trained with (from its meta.json)."""
    from nca_scale import config as config_io
    from nca_scale.model.config import ModelConfig

    meta = json.loads((ckpt / "meta.json").read_text())
    return config_io.from_dict(ModelConfig, meta["config"]["model"], source=str(ckpt))


MOMENTS = ("exp_avg", "exp_avg_sq")


def torch_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(weights, {moment: tensors}) of a torch-backend checkpoint (DCP: optimizer state keyed by parameter
    name) under logical names. A tied head (the embedding's parameter under a second name) has no optimizer
    state of its own and is left out, as in the other backends' states."""
    from nca_scale.train.backends.torch.format import DCP
    from nca_scale.train.transfer import read_dcp

    weights, optim = read_dcp(ckpt / DCP, "model."), read_dcp(ckpt / DCP, "optimizer.state.")
    if model_config(ckpt).tie_embeddings:
        del weights["head.weight"]
    moments: dict[str, dict[str, torch.Tensor]] = {k: {} for k in MOMENTS}
    for key, t in optim.items():
        name, _, k = key.rpartition(".")
        if k in MOMENTS:
            assert t.shape == weights[name].shape, (name, k)
            moments[k][name] = t
    assert all(m.keys() in (set(), weights.keys()) for m in moments.values()), "moments missing for some weights"
    return weights, moments


# megatron-core's local-spec parameters (module names; layer tensors under layer 0 with the global index apart)
_MEGATRON_LAYER_PARAMS = ("input_layernorm.weight", "self_attention.linear_qkv.weight", "self_attention.linear_proj.weight",
                          "pre_mlp_layernorm.weight", "mlp.linear_fc1.weight", "mlp.linear_fc2.weight")


def _megatron_params(cfg) -> list[tuple[str, int | None]]:
    names = [("embedding.word_embeddings.weight", None), ("decoder.final_layernorm.weight", None)]
    names += [(f"decoder.layers.0.{s}", i) for i in range(cfg.n_layers) for s in _MEGATRON_LAYER_PARAMS]
    return names + ([] if cfg.tie_embeddings else [("output_layer.weight", None)])


def _unflatten_distributed(full: dict, cfg, weights: dict[str, torch.Tensor], tp: int) -> dict[str, dict]:
    """Main params and moments of the distributed optimizer's dp_reshardable checkpoint (one flat buffer per
    TP x PP domain and bucket, parameters in megatron's buffer order) under logical names. Each parameter's
    place in a buffer is found by value: its local shard (nca_scale.model.layout.megatron_shard of the
    checkpoint's model weights) equals the saved main params there rounded to the weights' dtype. The same
    megatron_shard applied to element ids maps the shard back to logical elements, so no layout rule is
    restated here."""
    from nca_scale.model.layout import logical_shapes, megatron_shard

    shapes = logical_shapes(cfg)
    ids, offset = {}, 0
    for name, shape in shapes.items():
        n = int(torch.tensor(shape).prod())
        ids[name] = torch.arange(offset, offset + n, dtype=torch.float64).view(shape)
        offset += n
    keys = ("param", *MOMENTS)
    flat = {k: torch.full((offset,), float("nan"), dtype=torch.float64) for k in keys}
    dtype = full["embedding.word_embeddings.weight"].dtype  # bf16 runs: model params are the main params rounded
    buckets = [k[: -len(".param")] for k in full if k.startswith("optimizer.distributed.") and k.endswith(".param")]
    assert buckets, "no distributed-optimizer buffers in the checkpoint"
    for bucket in buckets:
        main = full[bucket + ".param"].to(dtype).to(torch.float64)
        for name, layer in _megatron_params(cfg):
            for r in range(tp):
                w = megatron_shard(cfg, name, layer, r, tp, weights.__getitem__).flatten().to(torch.float64)
                idx = megatron_shard(cfg, name, layer, r, tp, ids.__getitem__).flatten().long()
                for pos in (main == w[0]).nonzero().flatten().tolist():
                    if torch.equal(main[pos : pos + len(w)], w):
                        for k in keys:
                            flat[k][idx] = full[f"{bucket}.{k}"][pos : pos + len(w)].to(torch.float64)
    missing = int(flat["param"].isnan().sum())
    assert missing == 0, f"{missing} of {offset} elements not found in the distributed optimizer's buffers"
    return {k: {name: flat[k][ids[name].long()].float() for name in shapes} for k in keys}


def megatron_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(weights, {moment: tensors}) of a megatron torch_dist checkpoint under logical names, gathered to full
    size; any optimizer format (distributed: flat dp_reshardable buffers or fully_reshardable per-parameter
    tensors; plain: sharded like the model).
    The weights are the optimizer's fp32 main params where it keeps them (bf16 runs; the distributed
    optimizer always), else the model's."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from nca_scale.train.backends.megatron.format import logical as _from_megatron

    cfg = model_config(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(ckpt / "dist", Path(tmp) / "full.pt")
        full = torch.load(Path(tmp) / "full.pt", weights_only=False)
    full = {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
    weights = _from_megatron({k: v for k, v in full.items() if not k.startswith("optimizer")}, cfg)
    layout = json.loads((ckpt / "meta.json").read_text())["layout"]
    if any(k.startswith("optimizer.distributed.") for k in full):
        state = _unflatten_distributed(full, cfg, weights, layout["tp"])
        return state["param"], {k: state[k] for k in MOMENTS}
    state = {}
    # the plain optimizer's per-parameter state, or the distributed optimizer's fully_reshardable one (whose fp32
    # main params are `param`)
    for k in ("fp32_param", "param", *MOMENTS):
        prefix = f"optimizer.state.{k}."
        saved = {n[len(prefix):]: v for n, v in full.items() if n.startswith(prefix)}
        state[k] = _from_megatron(saved, cfg) if saved else {}
    return state["fp32_param"] or state["param"] or weights, {k: state[k] for k in MOMENTS}


def deepspeed_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(fp32 weights, {moment: tensors}) of a DeepSpeed ZeRO 1-3 checkpoint, gathered to full size under
    logical names. zero_to_fp32 reassembles the ranks' flat fp32 master partitions into named tensors; the
    optimizer's moments are flat tensors partitioned exactly like them, so the same reassembly runs on them."""
    from deepspeed.utils import zero_to_fp32 as z

    ds = str(ckpt / "ds")
    model_states = z.parse_model_states(z.get_model_state_files(ds))
    saved = [torch.load(f, weights_only=False)["optimizer_state_dict"] for f in z.get_optim_files(ds)]
    stage, world = saved[0]["zero_stage"], len(saved)
    masters, inner = ("single_partition_of_fp32_groups", "base_optimizer_state") if stage <= 2 else \
        ("fp32_flat_groups", "optimizer_state_dict")
    flats = {"weights": [s[masters] for s in saved]}
    for k in MOMENTS if "exp_avg" in saved[0][inner]["state"].get(0, {}) else ():  # Adam's; SGD has none
        flats[k] = [[s[inner]["state"][g][k] for g in range(len(s[masters]))] for s in saved]

    def gather(flat):
        if stage <= 2:
            full = z._get_fp32_state_dict_from_zero2_checkpoint(world, flat, model_states, True,
                                                               saved[0].get("param_alignment_paddings"))
        else:
            full = z._get_fp32_state_dict_from_zero3_checkpoint(world, flat, model_states, True)
        return {k: v.clone() for k, v in z.to_torch_tensor(full).items()}

    gathered = {k: gather(v) for k, v in flats.items()}
    return gathered.pop("weights"), {k: gathered.get(k, {}) for k in MOMENTS}


def update_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], base: dict[str, torch.Tensor] | None = None,
                 ) -> tuple[float, str]:
    """The largest per-tensor ||a - b|| / ||b - base|| (Frobenius; base: e.g. the initial weights, so that what
    training changed is the scale) and its tensor: a norm, not an elementwise maximum, for runs whose single
    elements are noise (bf16 rounding; Adam steps lr*g/sqrt(v) on elements whose gradient is near zero)."""
    assert a.keys() == b.keys() and a, (sorted(a)[:5], sorted(b)[:5])
    worst = (0.0, "")
    for name in b:
        ref = b[name].float() - (base[name].float() if base else 0)
        worst = max(worst, (((a[name].float() - b[name].float()).norm() / ref.norm()).item(), name))
    return worst


def initial_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """The layout-independent initial weights of a checkpoint's run (its model config and seed)."""
    from nca_scale.model.layout import init_tensor, logical_shapes

    cfg, seed = model_config(ckpt), json.loads((ckpt / "meta.json").read_text())["config"]["seed"]
    return {name: init_tensor(cfg, name, seed) for name in logical_shapes(cfg)}


# plain SGD without clipping (the scale-sensitive runs): the weights move by lr x gradient
SGD = ("optim.name=sgd", "optim.clip_grad=0", "optim.lr=0.5")


# layout vs single process, relative (docs/training.md, "Layout checks"): losses and grad norms per step, final
# weights as a share of what training moved them (update_error against the initial weights), moments
FP32 = {"loss": 1e-4, "grad_norm": 5e-5, "weights": 1e-4, "moments": 2e-5}
BF16 = {"loss": 1e-4, "grad_norm": 5e-3, "weights": 0.15, "moments": 0.05}


def final_checkpoint(out: Path) -> Path:
    return out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()


def run_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(weights, {moment: tensors}) of a torch, DeepSpeed or megatron checkpoint, full size, logical names."""
    if (ckpt / "dist").is_dir():
        return megatron_state(ckpt)
    return deepspeed_state(ckpt) if (ckpt / "ds").is_dir() else torch_state(ckpt)


PHASES = ("data_time", "fwd_bwd_time", "optimizer_time")


def assert_phase_timers(run: Path, saved_at: int) -> None:
    """`run`'s metrics lines split each step into data wait, forward/backward and optimizer (docs/training.md,
    "Phase timers"), and report the save after step `saved_at` as checkpoint_time on the next line: disjoint
    phases (together at most step_time) that cover it (under 10 % left out in the median: bookkeeping and GIL
    waits while the prefetch thread works), the save far above the checkpointer's per-step bookkeeping, no
    peak_memory_gib without a GPU (rather than a made-up 0)."""
    steps = [m for m in metrics(run) if "loss" in m]
    for m in steps:
        assert all(m[k] >= 0 for k in (*PHASES, "checkpoint_time")), m
        assert m["fwd_bwd_time"] > 0 and m["optimizer_time"] > 0, m
        assert sum(m[k] for k in PHASES) <= m["step_time"] + 1e-6, m
        assert "peak_memory_gib" not in m
    unaccounted = statistics.median(1 - sum(m[k] for k in PHASES) / m["step_time"] for m in steps)
    assert unaccounted < 0.1, [(m["step_time"], [m[k] for k in PHASES]) for m in steps]
    saves = {m["step"]: m["checkpoint_time"] for m in steps}
    others = [t for step, t in saves.items() if step != saved_at + 1]
    assert saves[1] == 0.0, saves  # the checkpointer runs after the first line is made
    assert saves[saved_at + 1] > max(0.001, 10 * statistics.median(others)), saves
    assert max(others) < 0.05, saves


def assert_same_training(run: Path, ref: Path, tol: dict[str, float]) -> None:
    """`run` trained like the single-process `ref`: every step's loss and gradient norm, the final weights and
    optimizer moments, within `tol` (FP32 or BF16). Gradient norms first: a gradient-scale bug shows there at
    step 1, while Adam hides it from the losses for a while."""
    assert_close(grad_norms(run), grad_norms(ref), tol["grad_norm"])
    assert_close(losses(run), losses(ref), tol["loss"])
    (weights, moments), (ref_weights, ref_moments) = run_state(final_checkpoint(run)), run_state(final_checkpoint(ref))
    err = update_error(weights, ref_weights, initial_weights(final_checkpoint(ref)))
    assert err[0] <= tol["weights"], f"final weights: {err}"
    for k in MOMENTS:
        assert bool(moments[k]) == bool(ref_moments[k]), k
        if ref_moments[k]:
            err = update_error(moments[k], ref_moments[k])
            assert err[0] <= tol["moments"], f"{k}: {err}"
