"""The NCA data engine: random rule networks, batched rollout, tokenizer, complexity, rule banks, stream."""
