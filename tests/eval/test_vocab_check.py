"""Where a model meets text (issue 25): an NCA-stage model (vocabulary 10,002) exported or evaluated with a
500-piece text tokenizer, or evaluated on text shards of another vocabulary, is refused naming both sizes
(before: export exited 0, eval reported ppl 13,324), unless allow_vocab_mismatch=true."""

from __future__ import annotations

import pytest

from nca_scale import cli
from nca_scale.errors import UserError
from nca_scale.train.transfer import check_vocabulary


def test_export_and_eval_with_another_tokenizer_are_refused_naming_both_sizes(tiny_run, sp_model, tmp_path, capsys):
    for args in (["export", str(tiny_run), f"out={tmp_path / 'hf'}", f"tokenizer={sp_model}"],
                 ["eval", str(tiny_run), "task=humaneval", f"tokenizer={sp_model}", "limit=1"]):
        capsys.readouterr()
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert "has a vocabulary of 10,002 but tokenizer" in err and "has 500 pieces" in err, err
        assert "allow_vocab_mismatch=true" in err
    assert not (tmp_path / "hf").exists()
    assert cli.main(["export", str(tiny_run), f"out={tmp_path / 'hf'}", f"tokenizer={sp_model}",
                     "allow_vocab_mismatch=true"]) == 0


def test_perplexity_on_shards_of_another_vocabulary_is_refused(tiny_run, monkeypatch, capsys):
    import numpy as np

    from nca_scale.analysis.eval import perplexity

    def text_shards(data, **kw):  # what _shards reports for text shards packed with a 1,000-piece tokenizer
        return np.zeros((2, 129), dtype=np.int64), None, {"source": data, "kind": "text shards", "vocab_size": 1000}

    monkeypatch.setattr(perplexity, "load_rows", text_shards)
    capsys.readouterr()
    assert cli.main(["eval", str(tiny_run), "task=ppl", "data=shards/text"]) == 2
    err = capsys.readouterr().err
    assert "vocabulary of 10,002 but data=shards/text (text shards) has 1,000 pieces" in err, err


def test_a_vocabulary_padded_for_tensor_parallelism_is_the_same_tokenizer():
    check_vocabulary(1024, 1000, model="m", text="t", allow="a")  # padded up to a multiple of 128
    check_vocabulary(1000, 1000, model="m", text="t", allow="a")
    with pytest.raises(UserError, match="m has a vocabulary of 1,152 but t has 1,000 pieces"):
        check_vocabulary(1152, 1000, model="m", text="t", allow="a")
