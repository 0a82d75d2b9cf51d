"""nca-scale tokenizer train CORPUS [CORPUS ...] out=DIR [CONFIG.yaml] [vocab_size=8000] [model_type=bpe] [...]

Train a SentencePiece tokenizer on the train split of one corpus (per domain) or several (shared), each an
embedded name (web, math, code; built first with `nca-scale corpus build`) or a built corpus URL. Writes
DIR/tokenizer.model and DIR/tokenizer.json. Keys (configs/data/tokenizer-*.yaml): vocab_size, model_type
(bpe|unigram), byte_fallback, character_coverage, split_digits, max_train_bytes, max_sentence_length,
threads (0 = all cores). Id 0 = <unk>, 1 = <eos> (between documents); byte fallback makes every text
round-trip exactly.
"""

from __future__ import annotations

from nca_scale import config as config_io
from nca_scale.errors import UserError


def train(args: list[str]) -> int:
    from nca_scale.data.text.corpus import Corpus
    from nca_scale.data.text.tokenizer import TokenizerConfig, train_tokenizer

    positional, overrides = config_io.split_overrides(args)
    out = [v for k, v in overrides if k == "out"]
    overrides = [(k, v) for k, v in overrides if k != "out"]
    yaml_files = [p for p in positional if p.endswith((".yaml", ".yml"))]
    names = [p for p in positional if p not in yaml_files]
    if not names or not out or len(yaml_files) > 1:
        raise UserError("usage: nca-scale tokenizer train CORPUS [CORPUS ...] out=DIR [CONFIG.yaml] [vocab_size=N]")
    cfg = config_io.load(TokenizerConfig, yaml_files[0] if yaml_files else None, overrides)
    corpora = [Corpus.open(n) for n in names]
    train_tokenizer(corpora, cfg, out[0])
    return 0


train.__doc__ = __doc__
