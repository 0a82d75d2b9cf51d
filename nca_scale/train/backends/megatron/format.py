"""What a megatron checkpoint holds: `dist/`, megatron-core's torch_dist directory (torch.distributed.checkpoint
underneath): the model's sharded tensors, which load under any TP/PP layout, and the optimizer state, which
reshards over DP only when the distributed optimizer wrote it dp_reshardable."""

from __future__ import annotations

from pathlib import Path

import torch

from nca_scale.errors import UserError
from nca_scale.model.config import ModelConfig
from nca_scale.model.layout import split_qkv
from nca_scale.train.backends.base import Format
from nca_scale.train.backends.megatron.config import MegatronConfig
from nca_scale.train.config import TrainConfig
from nca_scale.train.transfer import dcp_keys, read_dcp


class MegatronFormat(Format):
    resume_keys = ("megatron.distributed_optimizer",)

    def check_resumable(self, path: Path, cfg: TrainConfig, saved: dict, layout: dict) -> None:
        moved = [k for k in ("tp", "pp", "vpp") if layout[k] != getattr(cfg.parallel, k)]
        if moved and saved["megatron"]["distributed_optimizer"] and \
                _optimizer_layout(saved["megatron"], layout) != "fully_reshardable":
            raise UserError(
                f"{path} holds dp_reshardable distributed-optimizer state, which reshards over DP only, but "
                f"{', '.join(moved)} changed; resume under its parallel.tp/pp/vpp (runs with "
                "megatron.optimizer_layout=fully_reshardable, the default with tp or pp > 1, or "
                "megatron.distributed_optimizer=false reshard freely)"
            )

    def read_weights(self, path: Path, meta: dict, model: ModelConfig) -> dict[str, torch.Tensor]:
        """Only the model's items of the torch_dist directory are read."""
        model_keys = [k for k in dcp_keys(path / "dist") if not k.startswith("optimizer")]
        return logical(read_dcp(path / "dist", "", model_keys), model)


def _optimizer_layout(megatron: dict, layout: dict) -> str:
    """The distributed optimizer's checkpoint layout a megatron run wrote; runs from before
    megatron.optimizer_layout existed wrote dp_reshardable."""
    if "optimizer_layout" not in megatron:
        return "dp_reshardable"
    return MegatronConfig(optimizer_layout=megatron["optimizer_layout"]).optimizer_sharding(layout["tp"], layout["pp"])


def logical(sd: dict[str, torch.Tensor], model: ModelConfig) -> dict[str, torch.Tensor]:
    """megatron-core's checkpoint names (layers stacked on dim 0, fc1 = [gate; up], fused per-group qkv, norms
    stored as TE-style layer_norm_weight) -> logical names."""
    out = {"tok_emb.weight": sd["embedding.word_embeddings.weight"], "norm.weight": sd["decoder.final_layernorm.weight"]}
    if not model.tie_embeddings:
        out["head.weight"] = sd["output_layer.weight"]
    layers = "decoder.layers."
    for i in range(model.n_layers):
        p = f"layers.{i}."
        q, k, v = split_qkv(model, sd[layers + "self_attention.linear_qkv.weight"][i])
        gate, up = sd[layers + "mlp.linear_fc1.weight"][i].chunk(2)
        out |= {
            p + "attn_norm.weight": sd[layers + "self_attention.linear_qkv.layer_norm_weight"][i],
            p + "attn.wq.weight": q, p + "attn.wk.weight": k, p + "attn.wv.weight": v,
            p + "attn.wo.weight": sd[layers + "self_attention.linear_proj.weight"][i],
            p + "mlp_norm.weight": sd[layers + "mlp.linear_fc1.layer_norm_weight"][i],
            p + "mlp.w_gate.weight": gate, p + "mlp.w_up.weight": up,
            p + "mlp.w_down.weight": sd[layers + "mlp.linear_fc2.weight"][i],
        }
    return {k: v.float().contiguous() for k, v in out.items()}


FORMAT = MegatronFormat()
