"""Hugging Face export/import (logits equal to ours), the converted tokenizer, and KV-cache generation."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported
import sentencepiece as spm  # noqa: E402
import transformers  # noqa: E402

from nca_scale.errors import UserError  # noqa: E402
from nca_scale.model import hf  # noqa: E402
from nca_scale.model.config import ModelConfig  # noqa: E402
from nca_scale.model.generate import KVCache, SamplingConfig, forward_cached, generate, sample_token  # noqa: E402
from nca_scale.model.llama import Llama, rope_tables  # noqa: E402

STDLIB = Path(os.__file__).parent
CLI = [str(Path(sys.executable).parent / "nca-scale")]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
FAST = ["data.nca.bank.size=8", "data.nca.bank.val_size=4", "wandb=disabled", "progress=false", "eval_every=0"]


def train(out: Path, *overrides: str, cwd: Path) -> None:
    r = subprocess.run([*CLI, "train", "configs/train/cpu-tiny.yaml", f"out={out}", *FAST, *overrides], cwd=cwd,
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def stdlib_text(pattern: str, limit: int = 60_000) -> str:
    return "".join(Path(f).read_text(encoding="utf-8") for f in sorted(glob.glob(str(STDLIB / pattern))))[:limit]


def train_sp(d: Path, project: bool) -> Path:
    """A sentencepiece model trained here on stdlib source: with nca_scale.data.text's settings (no dummy
    prefix, "\\n" piece, EOS 1, no BOS) or with sentencepiece's defaults (dummy prefix, BOS/EOS)."""
    (d / "c.txt").write_text(stdlib_text("json/*.py") + stdlib_text("email/_*.py"))
    common = dict(input=str(d / "c.txt"), model_prefix=str(d / "sp"), vocab_size=600, model_type="bpe",
                  byte_fallback=True, character_coverage=1.0, split_digits=True, num_threads=1, minloglevel=2,
                  max_sentence_length=16384)
    if project:
        common |= dict(normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
                       allow_whitespace_only_pieces=True, user_defined_symbols=["\n"], unk_id=0, eos_id=1, bos_id=-1,
                       pad_id=-1)
    else:
        common |= dict(normalization_rule_name="identity")
    spm.SentencePieceTrainer.train(**common)
    return d / "sp.model"


@pytest.fixture(scope="module", params=["project", "spm-defaults"])
def sp_model(request, tmp_path_factory) -> Path:
    return train_sp(tmp_path_factory.mktemp("spm"), request.param == "project")


@pytest.fixture(scope="module")
def sp_project(tmp_path_factory) -> Path:
    return train_sp(tmp_path_factory.mktemp("spm"), True)


def random_model(cfg: ModelConfig, seed: int = 0) -> Llama:
    gen = torch.Generator().manual_seed(seed)

    def weights(name):  # norms off 1 too, so a swapped norm would show
        shape = hf.logical_shapes(cfg)[name]
        return torch.randn(shape, generator=gen) * (0.1 if "norm" not in name else 0.3) + (1.0 if "norm" in name else 0)

    return Llama(cfg, 64, weights=weights).eval()


CFGS = {
    "mha-untied": ModelConfig(n_layers=2, d_model=64, n_heads=4, vocab_size=700, rope_theta=1e4, norm_eps=1e-6),
    "gqa-tied": ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=700, tie_embeddings=True,
                            rope_theta=5e5, norm_eps=1e-5, ffn_hidden=96),
}


@pytest.mark.parametrize("name", CFGS)
def test_export_loads_in_transformers_with_identical_logits(name, tmp_path, sp_model):
    cfg = CFGS[name]
    ours = random_model(cfg)
    out = hf.export(ours.state_dict(), cfg, tmp_path / "hf", max_positions=64, tokenizer=sp_model)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    c = model.config
    assert (c.tie_word_embeddings, c.rms_norm_eps, c.num_key_value_heads) == (cfg.tie_embeddings, cfg.norm_eps, cfg.kv_heads)
    assert c.rope_parameters["rope_theta"] == cfg.rope_theta and not c.mlp_bias and not c.attention_bias
    x = torch.randint(0, cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(x).logits - ours(x)).abs().max().item()
    assert diff < 1e-5, diff
    # greedy generation with transformers' own cache == ours with the KV cache
    prompt = x[:1, :7]
    theirs = model.generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0)[0, 7:]
    mine = generate(ours, [prompt[0].tolist()], SamplingConfig(max_new_tokens=12, temperature=0.0))[0][0]["tokens"]
    assert mine == theirs.tolist()


def test_tokenizer_converts_exactly(tmp_path, sp_model):
    out = hf.export(random_model(CFGS["mha-untied"]).state_dict(), CFGS["mha-untied"], tmp_path / "hf",
                    tokenizer=sp_model)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    texts = [stdlib_text("textwrap.py", 20_000), stdlib_text("csv.py", 5_000), "x   = 1234.5e-3  \n\t\tdef f(a,b):\n",
             "  leading spaces", "unicode: é漢字 ∑ \u00a0 emoji 🙂", "", "a", "\n\n"]
    for t in texts:
        assert tok.encode(t) == sp.encode(t), t[:60]
        assert tok.decode(sp.encode(t)) == sp.decode(sp.encode(t))
    assert tok.eos_token_id == sp.eos_id()


def test_import_from_transformers_gives_identical_logits(tmp_path):
    conf = transformers.LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1e4},
                                    tie_word_embeddings=False)
    torch.manual_seed(0)
    theirs = transformers.LlamaForCausalLM(conf).eval()
    with torch.no_grad():  # HF init leaves norms at 1: perturb them so a mapping error shows
        for n, p in theirs.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.3)
    theirs.save_pretrained(tmp_path / "hf")
    cfg, tensors, _ = hf.read_hf(tmp_path / "hf")
    assert (cfg.n_kv_heads, cfg.ffn, cfg.vocab_size) == (2, 80, 300)
    ours = Llama(cfg, 64, weights=tensors.__getitem__).eval()
    x = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)).abs().max().item() < 1e-5
    # and back: export -> read gives the same tensors bit for bit
    hf.export(tensors, cfg, tmp_path / "again")
    _, again, _ = hf.read_hf(tmp_path / "again")
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_export_refuses_what_llama_cannot_express(tmp_path):
    cfg = CFGS["mha-untied"]
    sd = random_model(cfg).state_dict()
    with pytest.raises(UserError, match="LM-head bias"):
        hf.export({**sd, "head.bias": torch.zeros(cfg.vocab_size)}, cfg, tmp_path / "a")
    with pytest.raises(UserError, match="bias"):
        hf.export({**sd, "layers.0.attn.wq.bias": torch.zeros(64)}, cfg, tmp_path / "b")
    with pytest.raises(UserError, match="lacks"):
        hf.export({k: v for k, v in sd.items() if k != "norm.weight"}, cfg, tmp_path / "c")
    assert not (tmp_path / "a" / hf.WEIGHTS).exists()


def test_kv_cache_matches_the_full_forward_for_left_padded_batches():
    cfg = CFGS["gqa-tied"]
    model = random_model(cfg)
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, cfg.vocab_size, (n,), generator=gen) for n in (9, 4, 13)]
    width = 13
    tokens = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width + 4, dtype=torch.bool)
    mask[:, width:] = True
    for i, s in enumerate(seqs):
        tokens[i, width - len(s):] = s
        mask[i, width - len(s):] = True
    pos = (torch.arange(width) - (width - torch.tensor([len(s) for s in seqs])).unsqueeze(1)).clamp(min=0)
    cos, sin = rope_tables(cfg.head_dim, width + 4, cfg.rope_theta)
    cache = KVCache(model, 3, width + 4, "cpu", torch.float32)
    with torch.no_grad():
        prefill = forward_cached(model, tokens, pos, mask, cache, cos, sin)
        nxt = torch.randint(0, cfg.vocab_size, (3, 1), generator=gen)
        step = forward_cached(model, nxt, pos[:, -1:] + 1, mask, cache, cos, sin)
        for i, s in enumerate(seqs):
            full = model(torch.cat([s, nxt[i]]).unsqueeze(0))[0]
            assert (prefill[i, width - len(s):] - full[:-1]).abs().max() < 1e-5
            assert (step[i, 0] - full[-1]).abs().max() < 1e-5


def test_generation_batch_independence_stops_and_top_p():
    cfg = CFGS["mha-untied"]
    model = random_model(cfg, seed=5)
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12], [4]]
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    together = generate(model, prompts, greedy)
    alone = [generate(model, [p], greedy)[0] for p in prompts]
    assert [r[0]["tokens"] for r in together] == [r[0]["tokens"] for r in alone]
    # a stop token ends the row (not included); a stop string cuts the decoded text
    first = together[0][0]["tokens"]
    stopped = generate(model, [prompts[0]], SamplingConfig(max_new_tokens=10, temperature=0.0, stop_ids=(first[2],)))
    assert stopped[0][0]["tokens"] == first[:2] and stopped[0][0]["finish"] == "stop"

    def decode(ids):
        return " ".join(f"t{i}" for i in ids)

    cut = generate(model, [prompts[0]], SamplingConfig(max_new_tokens=10, temperature=0.0, stop=(f"t{first[3]}",)),
                   decode=decode)[0][0]
    assert cut["finish"] == "stop" and cut["text"] == decode(first[:3]) + " "
    # n samples per prompt at T > 0 are reproducible from the seed and differ from one another
    sc = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.9, n=4, seed=11)
    a, b = generate(model, prompts[:2], sc), generate(model, prompts[:2], sc)
    assert a == b and len(a) == 2 and len(a[0]) == 4
    assert len({tuple(s["tokens"]) for s in a[0]}) > 1
    # top-p: only the smallest set of tokens reaching p can be drawn
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {sample_token(logits, 1.0, 0.75, g).item() for _ in range(300)}
    assert draws == {0, 1}
    assert {sample_token(logits, 1.0, 0.5, g).item() for _ in range(50)} == {0}


@pytest.fixture(scope="module")
def megatron_run(tmp_path_factory, repo_root) -> Path:
    """`nca-scale train` with the megatron backend, TP=2 over 2 processes, one step, evaluated at the end."""
    run = tmp_path_factory.mktemp("meg") / "run"
    train(run, "steps=1", "backend=megatron", "parallel.nproc=2", "parallel.tp=2", "eval_every=1", "eval_batches=1", cwd=repo_root)
    return run


@pytest.mark.slow
def test_megatron_tp2_checkpoint_exports_to_the_loss_megatron_computed(tmp_path, megatron_run):
    """A megatron TP=2 checkpoint (fused, sharded, torch_dist) exported and run by transformers gives the
    eval loss megatron itself logged for those weights."""
    import json

    import numpy as np
    import torch.nn.functional as F

    from nca_scale import config
    from nca_scale.nca.config import NCAConfig
    from nca_scale.nca.stream import NCAStream
    from nca_scale.nca.tokenizer import loss_mask

    run = megatron_run
    subprocess.run([*CLI, "export", str(run), f"out={tmp_path / 'hf'}"], check=True, env=ENV, capture_output=True)
    logged = [m["eval_loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in m]
    meta = json.loads(next((run / "checkpoints").glob("step_*/meta.json")).read_text())
    nca = config.from_dict(NCAConfig, meta["config"]["data"]["nca"], source="meta")
    rows = NCAStream(nca, "val").sequences(np.arange(meta["config"]["batch_size"])).long()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = model(rows[:, :-1]).logits
    losses = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="none").view(len(rows), -1)
    ours = losses[:, loss_mask(nca)].mean().item()
    assert abs(ours - logged[-1]) < 1e-5 * abs(logged[-1]), (ours, logged)


@pytest.mark.slow
def test_cli_export_and_import_of_a_trained_checkpoint(tmp_path, sp_project, megatron_run):
    """nca-scale export (run directory -> latest checkpoint) -> transformers logits == ours; nca-scale import
    -> a checkpoint with the same config and tensors that eval/export/init_from read."""
    from nca_scale.analysis.eval import model_io

    # an NCA model with a 600-piece text tokenizer: a format test, so the vocabulary check is waived
    r = subprocess.run([*CLI, "export", str(megatron_run), f"out={tmp_path / 'hf'}", f"tokenizer={sp_project}",
                        "allow_vocab_mismatch=true"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg, tensors, info = model_io.read_weights(megatron_run)
    assert info["step"] == 1 and info["backend"] == "megatron" and info["layout"]["tp"] == 2
    ours = model_io.build(cfg, tensors, 128)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, cfg.vocab_size, (2, 50))
    with torch.no_grad():
        assert (theirs(x).logits - ours(x)).abs().max().item() < 1e-5
    r = subprocess.run([*CLI, "import", str(tmp_path / "hf"), f"out={tmp_path / 'imported'}"], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg2, tensors2, info2 = model_io.read_weights(tmp_path / "imported")
    assert cfg2 == cfg and tensors2.keys() == tensors.keys() and all(torch.equal(tensors2[k], tensors[k]) for k in tensors)
    assert info2["tokenizer"] and Path(info2["tokenizer"]).read_bytes() == sp_project.read_bytes()
    bad = subprocess.run([*CLI, "export", str(tmp_path / "nothing"), f"out={tmp_path / 'x'}"], env=ENV,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
