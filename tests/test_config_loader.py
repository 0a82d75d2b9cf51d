"""nca_scale.config.load: YAML files, key=value overrides and the errors users see."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nca_scale.config import load, split_overrides
from nca_scale.errors import UserError
from nca_scale.nca.config import ComplexityConfig, NCAConfig

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("name", ["paper", "code", "tiny"])
def test_shipped_configs_load(name):
    cfg = load(NCAConfig, REPO / "configs" / "nca" / f"{name}.yaml")
    assert (cfg.grid, cfg.states, cfg.patch, cfg.temperature) == (12, 10, 2, 1e-4)
    assert isinstance(cfg.temperature, float)


def test_paper_yaml_is_the_default_config():
    """configs/nca/paper.yaml spells out the release; the dataclass defaults are the release too (bar the band)."""
    paper = load(NCAConfig, REPO / "configs" / "nca" / "paper.yaml")
    assert paper.complexity.lo == 0.5 and paper.complexity.hi == 1.0
    assert paper == NCAConfig(complexity=ComplexityConfig(lo=0.5, hi=1.0))


def test_defaults_when_no_file():
    assert load(NCAConfig, None) == NCAConfig()


def test_yaml_and_nested_overrides(tmp_path):
    p = write(tmp_path, """
        grid: 8
        states: 3
        complexity:
          lo: 0.2
          hi: 0.9
        bank:
          size: 10
    """)
    cfg = load(NCAConfig, p, [("complexity.lo", "0.3"), ("bank.refresh", "epoch"), ("seed", "7")])
    assert (cfg.grid, cfg.states, cfg.seed) == (8, 3, 7)
    assert cfg.complexity == ComplexityConfig(lo=0.3, hi=0.9)
    assert cfg.bank.size == 10 and cfg.bank.refresh == "epoch"
    # overrides apply in order; the last wins
    cfg = load(NCAConfig, p, [("complexity.lo", "0.3"), ("complexity.lo", "null")])
    assert cfg.complexity.lo is None


def test_scientific_notation_is_a_float(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` as a string; the loader still gives a float
    p = write(tmp_path, "temperature: 1e-4\n")
    cfg = load(NCAConfig, p)
    assert cfg.temperature == 1e-4 and isinstance(cfg.temperature, float)
    cfg = load(NCAConfig, None, [("temperature", "1e-3")])
    assert cfg.temperature == 1e-3 and isinstance(cfg.temperature, float)
    assert load(NCAConfig, None, [("identity_bias", "2")]).identity_bias == 2.0
    assert load(NCAConfig, None, [("bank.size", "1e3")]).bank.size == 1000


def test_split_overrides():
    pos, ov = split_overrides(["configs/x.yaml", "complexity.lo=0.3", "seed=1"])
    assert pos == ["configs/x.yaml"] and ov == [("complexity.lo", "0.3"), ("seed", "1")]


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "grid: 12\ngird: 12\n")
    with pytest.raises(UserError) as e:
        load(NCAConfig, p)
    assert "gird" in str(e.value) and str(p) in str(e.value)
    p = write(tmp_path, "complexity:\n  low: 0.3\n", "nested.yaml")
    with pytest.raises(UserError) as e:
        load(NCAConfig, p)
    assert "complexity.low" in str(e.value) and str(p) in str(e.value)


def test_unknown_override_names_key():
    with pytest.raises(UserError, match="complexity.low"):
        load(NCAConfig, None, [("complexity.low", "0.3")])
    with pytest.raises(UserError, match="gird"):
        load(NCAConfig, None, [("gird", "3")])
    with pytest.raises(UserError, match="grid.x"):
        load(NCAConfig, None, [("grid.x", "3")])


@pytest.mark.parametrize(
    "text,key",
    [
        ("grid: twelve\n", "grid"),
        ("grid: 12.5\n", "grid"),
        ("grid: true\n", "grid"),
        ("temperature: hot\n", "temperature"),
        ("wrap_state_channels: maybe\n", "wrap_state_channels"),
        ("complexity:\n  hi: [1]\n", "complexity.hi"),
        ("complexity: 3\n", "complexity"),
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        load(NCAConfig, p)
    assert f"'{key}'" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_override_names_key():
    with pytest.raises(UserError, match="'bank.size'"):
        load(NCAConfig, None, [("bank.size", "lots")])


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = write(tmp_path, "grid: 12\nstates: 10\ncomplexity:\n  lo: [0.3\n  hi: 0.4\n")
    with pytest.raises(UserError) as e:
        load(NCAConfig, p)
    msg = str(e.value)
    assert str(p) in msg and "line" in msg and "malformed" in msg.lower()
    p = write(tmp_path, "grid: 12\n\tstates: 3\n", "tab.yaml")
    with pytest.raises(UserError, match=r"line \d+"):
        load(NCAConfig, p)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(NCAConfig, tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="mapping"):
        load(NCAConfig, write(tmp_path, "- 1\n- 2\n"))
    assert load(NCAConfig, write(tmp_path, "", "empty.yaml")) == NCAConfig()


def test_literal_choices_enforced(tmp_path):
    with pytest.raises(UserError) as e:
        load(NCAConfig, write(tmp_path, "init_state: gaussian\n"))
    assert "'init_state'" in str(e.value) and "'reference'" in str(e.value) and "'uniform'" in str(e.value)
    with pytest.raises(UserError, match="'bank.refresh'"):
        load(NCAConfig, None, [("bank.refresh", "sometimes")])
    with pytest.raises(UserError, match="'complexity.mode'"):
        load(NCAConfig, None, [("complexity.mode", "shannon")])  # the reference's argparse default, unimplemented
    assert load(NCAConfig, None, [("init_state", "uniform")]).init_state == "uniform"


def test_sub_config_from_its_own_file(tmp_path):
    band = write(tmp_path, "lo: 0.3\nhi: 0.4\n", "band.yaml")
    p = write(tmp_path, f"complexity: {band}\n")
    assert load(NCAConfig, p).complexity == ComplexityConfig(lo=0.3, hi=0.4)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ([("complexity.lo", "0.5"), ("complexity.hi", "0.5")], "lo=0.5"),
        ([("complexity.lo", "0.6"), ("complexity.hi", "0.4")], "below hi"),
        ([("grid", "12"), ("patch", "5")], "not divisible"),
        ([("states", "300")], "token_dtype"),
        ([("states", "20")], "uint16"),
        ([("states", "300"), ("token_dtype", "int32")], "int32"),
        ([("temperature", "-1")], "temperature"),
        ([("grid", "2")], "grid"),
        ([("states", "1")], "states"),
        ([("seq_len", "10")], "seq_len"),
        ([("dt", "0")], "dt"),
        ([("bank.size", "0")], "bank.size"),
        ([("bank.refresh", "every")], "refresh_every"),
        ([("complexity.probe_frames", "1")], "probe_frames"),
    ],
)
def test_validate_errors(overrides, needle):
    with pytest.raises(UserError) as e:
        load(NCAConfig, None, overrides)
    assert needle in str(e.value)


def test_vocab_limits():
    # 16 states with 2x2 patches: 65536 + 2 ids do not fit uint16; int32 does
    with pytest.raises(UserError):
        load(NCAConfig, None, [("states", "16")])
    assert load(NCAConfig, None, [("states", "16"), ("token_dtype", "int32")]).vocab_size == 16**4 + 2
    # 15 states: largest id 50626 fits uint16
    assert load(NCAConfig, None, [("states", "15")]).vocab_size == 15**4 + 2


def test_nested_paths_resolve_against_the_naming_yaml_then_the_project(tmp_path, monkeypatch):
    """A config moved elsewhere names its parts relative to itself; the shipped ones work from any directory."""
    from nca_scale.train.config import TrainConfig

    here = tmp_path / "mine"
    here.mkdir()
    write(here, "n_layers: 3\nd_model: 48\nn_heads: 4\n", "model.yaml")
    write(here, "grid: 10\nstates: 4\n", "nca.yaml")
    mine = write(here, "model: model.yaml\ndata:\n  nca: nca.yaml\nsteps: 3\n", "train.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load(TrainConfig, mine)
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.data.nca.grid, cfg.data.nca.states) == (3, 48, 10, 4)
    shipped = load(TrainConfig, REPO / "configs/train/cpu-tiny.yaml")  # names configs/model/cpu-tiny.yaml
    assert shipped.data.nca == load(NCAConfig, REPO / "configs/nca/tiny.yaml")
    # on the command line: the current directory, then the project's configs/
    assert load(TrainConfig, None, [("model", "model/cpu-1m.yaml")]).model == load(
        type(shipped.model), REPO / "configs/model/cpu-1m.yaml")


def test_a_missing_nested_file_names_the_key_and_where_it_looked(tmp_path):
    p = write(tmp_path, "complexity: band.yaml\n")
    with pytest.raises(UserError) as e:
        load(NCAConfig, p)
    text = str(e.value)
    assert text.startswith(f"{p}: key 'complexity' names the config file band.yaml") and str(tmp_path) in text


def test_an_edited_copy_of_configs_beside_the_naming_yaml_wins_and_is_recorded(tmp_path, monkeypatch, caplog):
    """Issue 25: configs/ copied into an experiment folder and its model edited: the copy nearest the naming
    YAML's tree is read (not the shipped one), the choice is logged and OUT/config.yaml names the file."""
    import logging
    import shutil

    from nca_scale import config
    from nca_scale.train import run_folder
    from nca_scale.train.config import TrainConfig

    exp = tmp_path / "exp"
    shutil.copytree(REPO / "configs", exp / "configs")
    model = exp / "configs/model/cpu-tiny.yaml"
    model.write_text(model.read_text().replace("n_layers: 2", "n_layers: 3"))
    monkeypatch.chdir(tmp_path)  # neither the project nor the experiment
    with caplog.at_level(logging.INFO, logger="nca_scale.config"):
        cfg = load(TrainConfig, exp / "configs/train/cpu-tiny.yaml", [("out", str(tmp_path / "run"))])
    assert cfg.model.n_layers == 3
    assert f"model: configs/model/cpu-tiny.yaml -> {model}" in caplog.text
    assert "data.nca: configs/nca/tiny.yaml -> " + str(exp / "configs/nca/tiny.yaml") in caplog.text
    run_folder.write_config(cfg)
    assert f"#   model in {exp / 'configs/train/cpu-tiny.yaml'}: {model}\n" in (tmp_path / "run/config.yaml").read_text()
    assert config.NESTED_FILES  # the latest load's


def test_to_dict_writes_what_from_dict_reads(monkeypatch):
    """A saved config holds the keys (and config_version), not what was resolved from elsewhere: text shards'
    seq_len and vocabulary are read from their manifest by one explicit step (with_shape), never by a property."""
    from nca_scale.config import from_dict, to_dict
    from nca_scale.train import config as train_config
    from nca_scale.train.config import TrainConfig

    monkeypatch.setitem(train_config._TEXT_MANIFESTS, "memory://text", {"seq_len": 96, "vocab_size": 320})
    cfg = load(TrainConfig, None, [("data.source", "text_shards"), ("data.shards", "memory://text")])
    with pytest.raises(RuntimeError, match="read it first"):
        cfg.seq_len  # noqa: B018 (the property is the test)
    read = cfg.with_data_shape()
    assert (read.seq_len, read.data.vocab_size, read.tokens_per_step) == (96, 320, 96 * read.batch_size)
    assert read == cfg and read.resolved().model.vocab_size == 320
    saved = to_dict(read.resolved())
    assert "shape" not in saved["data"] and saved["config_version"] == TrainConfig.CONFIG_VERSION
    assert from_dict(TrainConfig, saved, source="config.yaml") == read.resolved()
