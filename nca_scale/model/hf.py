"""Hugging Face Llama format: export our logical tensors to a `LlamaForCausalLM` directory, and import one back.

A directory written here (new or empty before; renamed into place once complete) holds `config.json`
(LlamaConfig), `model.safetensors` (fp32 unless asked otherwise), `generation_config.json` and, when a
sentencepiece model is given, the tokenizer: `tokenizer.model` (the sentencepiece file itself),
`tokenizer.json` (converted with transformers' SpmConverter, so the fast tokenizer loads without sentencepiece
installed), `tokenizer_config.json` and `special_tokens_map.json`.

The mapping is one to one (our RoPE is already rotate-half, HF's layout): no permutation of q/k rows.

| ours (nca_scale.model.layout)        | transformers LlamaForCausalLM                         |
|--------------------------------------|-------------------------------------------------------|
| tok_emb.weight                       | model.embed_tokens.weight                             |
| layers.i.attn_norm.weight            | model.layers.i.input_layernorm.weight                 |
| layers.i.attn.w{q,k,v,o}.weight      | model.layers.i.self_attn.{q,k,v,o}_proj.weight        |
| layers.i.mlp_norm.weight             | model.layers.i.post_attention_layernorm.weight        |
| layers.i.mlp.w_{gate,up,down}.weight | model.layers.i.mlp.{gate,up,down}_proj.weight         |
| norm.weight                          | model.norm.weight                                     |
| head.weight (untied only)            | lm_head.weight                                        |

What LlamaForCausalLM cannot express is refused with a UserError: an LM-head bias (the paper release's
stage-1 head has one), biases anywhere else, or a ModelConfig field this module does not know.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import torch

from nca_scale.errors import UserError
from nca_scale.files import check_creatable, replacing
from nca_scale.model.config import ModelConfig
from nca_scale.model.layout import logical_shapes

WEIGHTS = "model.safetensors"
# ModelConfig fields and how they reach LlamaConfig; a field not listed here makes export refuse (it would be
# silently dropped otherwise).
_KNOWN_FIELDS = {"n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size", "rope_theta",
                 "norm_eps", "attn_dropout", "tie_embeddings", "init_std"}
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "head.weight": "lm_head.weight"}
_LAYER_RE = re.compile(r"layers\.(\d+)\.(.+)")


def to_hf_name(name: str) -> str:
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_MAP:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    raise UserError(_unexpressible(name))


def from_hf_name(name: str) -> str | None:
    """Our logical name of a HF tensor; None for tensors that carry no weights (rotary inv_freq buffers)."""
    if name.endswith("rotary_emb.inv_freq"):
        return None
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m:
        for ours, theirs in _LAYER_MAP.items():
            if theirs == m.group(2):
                return f"layers.{m.group(1)}.{ours}"
    for ours, theirs in _TOP_MAP.items():
        if theirs == name:
            return ours
    raise UserError(f"tensor {name!r} has no counterpart in nca_scale's Llama (biases, other architectures)")


def _unexpressible(name: str) -> str:
    if name == "head.bias":
        return ("the checkpoint has an LM-head bias (head.bias), which transformers' LlamaForCausalLM cannot express "
                "(its lm_head has no bias); export refuses rather than drop it")
    if name.endswith(".bias"):
        return f"the checkpoint has a bias {name!r}; LlamaForCausalLM's attention_bias/mlp_bias cover q/k/v/o and " \
               "gate/up/down together only, and nca_scale's Llama has none: refusing to export"
    return f"tensor {name!r} has no counterpart in transformers' LlamaForCausalLM; refusing to export"


def check_expressible(cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """UserError naming the first thing LlamaForCausalLM cannot represent faithfully."""
    for f in dataclasses.fields(cfg):
        if f.name not in _KNOWN_FIELDS and getattr(cfg, f.name) != f.default:
            raise UserError(f"model.{f.name}={getattr(cfg, f.name)!r} has no LlamaConfig equivalent known to the "
                            "exporter; refusing to export (extend nca_scale/model/hf.py)")
    if cfg.vocab_size is None:
        raise UserError("the model config has no vocab_size; cannot export")
    expected = logical_shapes(cfg)
    for name, t in tensors.items():
        if name not in expected:
            if cfg.tie_embeddings and name == "head.weight":
                continue  # a tied head saved explicitly: the same tensor as tok_emb
            raise UserError(_unexpressible(name))
        if tuple(t.shape) != expected[name]:
            raise UserError(f"tensor {name} is {tuple(t.shape)}, the model config says {expected[name]}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise UserError(f"the checkpoint lacks {len(missing)} tensors of the model, e.g. {missing[0]}")


def hf_config_dict(cfg: ModelConfig, max_positions: int, bos_id: int | None = None, eos_id: int | None = None,
                   pad_id: int | None = None) -> dict:
    """LlamaConfig kwargs. `rope_parameters` is the transformers >= 5 spelling, `rope_theta` the 4.x one;
    both are written so either generation of readers (and vLLM & co.) finds θ."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": cfg.attn_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def export(tensors: dict[str, torch.Tensor], cfg: ModelConfig, out: str | Path, *, max_positions: int = 2048,
           tokenizer: str | Path | None = None, dtype: torch.dtype = torch.float32, extra: dict | None = None) -> Path:
    """Write `tensors` (logical names, full size) as a LlamaForCausalLM directory `out`.

    `tokenizer`: a sentencepiece .model file to ship (and convert) alongside; `extra`: provenance written to
    `nca_scale.json` (the source checkpoint, step, ...)."""
    check_out(out)
    check_expressible(cfg, tensors)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:  # nothing under `out` until every file is written (a bad tokenizer= leaves none)
        tmp.mkdir()
        _write(tensors, cfg, tmp, max_positions, tokenizer, dtype, extra)
    return out


def check_out(out: str | Path) -> None:
    """`out` must be new or an empty directory: never a run or checkpoint folder (a config.json there would
    shadow its checkpoints for every later `export RUN`), nor a file."""
    out = Path(out)
    if out.is_file():
        raise UserError(f"out={out} is an existing file; export writes a directory: choose a new out=")
    if out.is_dir() and any(out.iterdir()):
        what = ("a run or checkpoint folder" if any((out / n).exists() for n in ("meta.json", "checkpoints", "metrics.jsonl"))
                else "not empty")
        raise UserError(f"out={out} is {what}; export into a new or empty directory")
    check_creatable(out)


def _write(tensors: dict[str, torch.Tensor], cfg: ModelConfig, out: Path, max_positions: int,
           tokenizer: str | Path | None, dtype: torch.dtype, extra: dict | None) -> None:
    from safetensors.torch import save_file

    special = _write_tokenizer(Path(tokenizer), out) if tokenizer else {}
    hf = {}
    for name, t in tensors.items():
        if cfg.tie_embeddings and name == "head.weight":
            continue
        hf[to_hf_name(name)] = t.detach().to("cpu", dtype).contiguous()
    save_file(hf, str(out / WEIGHTS), metadata={"format": "pt"})
    conf = hf_config_dict(cfg, max_positions, special.get("bos_id"), special.get("eos_id"), special.get("pad_id"))
    conf["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
    gen = {"bos_token_id": conf["bos_token_id"], "eos_token_id": conf["eos_token_id"],
           "pad_token_id": conf["pad_token_id"]}
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2))
    (out / "nca_scale.json").write_text(json.dumps({"model": dataclasses.asdict(cfg), **(extra or {})}, indent=1))


def _write_tokenizer(model_file: Path, out: Path) -> dict:
    """Ship the sentencepiece model, its fast-tokenizer conversion and the HF tokenizer config."""
    import sentencepiece as spm

    if not model_file.is_file():
        raise UserError(f"tokenizer={model_file} is not a file; pass a sentencepiece .model")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
    except (OSError, RuntimeError) as e:
        raise UserError(f"tokenizer={model_file} is not a sentencepiece model: {e}") from None
    shutil.copyfile(model_file, out / "tokenizer.model")

    def piece(i: int) -> str | None:
        return sp.id_to_piece(i) if 0 <= i < sp.get_piece_size() else None

    ids = {"bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "pad_id": sp.pad_id(), "unk_id": sp.unk_id()}
    ids = {k: (v if v >= 0 else None) for k, v in ids.items()}
    tokens = {k.replace("_id", "_token"): piece(v) for k, v in ids.items() if v is not None}
    fast = _convert_spm(str(model_file))
    fast.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1_000_000_000,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,  # nca_scale's corpora are documents + EOS, without BOS
        "add_eos_token": False,
        **tokens,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
    return ids


def _convert_spm(model_file: str):
    """A `tokenizers.Tokenizer` giving the sentencepiece model's ids for any text (BPE or unigram, byte fallback,
    dummy prefix, whitespace kept or collapsed), without BOS/EOS added. Built here rather than with
    transformers' SpmConverter, whose normalizer always collapses runs of spaces (wrong for code tokenizers
    trained with remove_extra_whitespaces=false)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = pb.ModelProto()
    proto.ParseFromString(Path(model_file).read_bytes())
    norm, spec = proto.normalizer_spec, proto.trainer_spec
    if norm.precompiled_charsmap or norm.name not in ("identity", ""):
        raise UserError(f"tokenizer {model_file}: normalization rule {norm.name!r} cannot be converted exactly; "
                        "train the sentencepiece model with normalization_rule_name=identity")
    pieces = [(p.piece, p.score) for p in proto.pieces]
    unk = spec.unk_id
    if spec.model_type == 1:  # unigram
        model = models.Unigram(pieces, unk_id=unk, byte_fallback=spec.byte_fallback)
    elif spec.model_type == 2:  # BPE: merges ranked by the score of the piece they make
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        merges = []
        for piece, score in pieces:
            local = [(piece[:j], piece[j:]) for j in range(1, len(piece)) if piece[:j] in vocab and piece[j:] in vocab]
            local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
            merges += [(a, b, score, vocab[piece]) for a, b in local]
        merges.sort(key=lambda m: (-m[2], m[3]))
        model = models.BPE(vocab, [(a, b) for a, b, _, _ in merges], unk_token=pieces[unk][0], fuse_unk=True,
                           byte_fallback=spec.byte_fallback)
    else:
        raise UserError(f"tokenizer {model_file}: sentencepiece model type {spec.model_type} is not BPE or unigram")
    tok = Tokenizer(model)
    steps = []
    if norm.remove_extra_whitespaces:
        # sentencepiece strips and folds spaces only (not newlines or tabs)
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    steps.append(normalizers.Replace(" ", "\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    if spec.split_digits:
        tok.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)
    # control (3) and user-defined (4) pieces match as whole tokens; control ones are special
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                    for p in proto.pieces if p.type in (3, 4)])
    return tok


def read_hf(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(ModelConfig, logical fp32 tensors, raw config.json) of a LlamaForCausalLM directory."""
    from safetensors.torch import load_file

    path = Path(path)
    conf_file = path / "config.json"
    if not conf_file.is_file():
        raise UserError(f"{path} is not a Hugging Face model directory (no config.json)")
    conf = json.loads(conf_file.read_text())
    if conf.get("model_type") != "llama":
        raise UserError(f"{path}: model_type={conf.get('model_type')!r}; only Llama models can be imported")
    for key in ("attention_bias", "mlp_bias"):
        if conf.get(key):
            raise UserError(f"{path}: {key}=true, but nca_scale's Llama has no biases")
    if conf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{path}: hidden_act={conf['hidden_act']!r}; nca_scale's SwiGLU uses silu")
    rope = conf.get("rope_parameters") or conf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"{path}: RoPE scaling {rope} is not supported (plain RoPE only)")
    theta = rope.get("rope_theta", conf.get("rope_theta", 10000.0))
    d, heads = conf["hidden_size"], conf["num_attention_heads"]
    if conf.get("head_dim") not in (None, d // heads):
        raise UserError(f"{path}: head_dim={conf['head_dim']} != hidden_size / num_attention_heads")
    kv = conf.get("num_key_value_heads") or heads
    cfg = ModelConfig(
        n_layers=conf["num_hidden_layers"], d_model=d, n_heads=heads, n_kv_heads=None if kv == heads else kv,
        ffn_hidden=None if conf["intermediate_size"] == 4 * d else conf["intermediate_size"], vocab_size=conf["vocab_size"], rope_theta=float(theta),
        norm_eps=float(conf.get("rms_norm_eps", 1e-6)), attn_dropout=float(conf.get("attention_dropout") or 0.0),
        tie_embeddings=bool(conf.get("tie_word_embeddings", False)), init_std=float(conf.get("initializer_range", 0.02)),
    )
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"{path}: no *.safetensors weights (pytorch_model.bin is not read: convert it first)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        for name, t in load_file(str(f)).items():
            ours = from_hf_name(name)
            if ours is not None:
                tensors[ours] = t.float()
    if cfg.tie_embeddings:
        tensors.pop("head.weight", None)
    check_expressible(cfg, tensors)
    return cfg, tensors, conf
