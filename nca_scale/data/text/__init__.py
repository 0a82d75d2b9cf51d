"""Text data: corpora (build, read), SentencePiece tokenizers, and packed token shards (docs/corpora.md)."""
